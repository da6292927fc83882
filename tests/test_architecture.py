"""The layering of docs/architecture.md, checked on the source: every import statement of
src/lorakit (lazy ones inside functions included) points down the layers, and no two
modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lorakit"

# Layer of each package or top-level module: imports go to the same layer or a lower one.
# Leaves (layer 0) import only the standard library, pydantic and each other.
LAYERS = {
    "errors": 0,
    "config": 0,
    "atomic": 0,
    "allocator": 0,
    "device": 0,
    "precision": 0,
    "quiet": 0,
    "yaml_config": 0,
    "lora": 1,
    "adapters": 2,
    "models": 3,
    "data": 4,
    "infer": 5,
    "eval": 6,
    "export": 6,
    "train": 7,
    "compare": 8,
    "serve": 8,
    "demo": 9,
    "cli_options": 9,
    "cli_errors": 9,
    "cli": 10,
    "__main__": 11,
    "": 11,  # lorakit/__init__.py: the public API gathers from everywhere
}
# Pairs that the layer numbers alone would allow but the design forbids.
FORBIDDEN = {("serve", "train"), ("serve", "compare"), ("eval", "train"), ("compare", "serve")}
THIRD_PARTY_FORBIDDEN = {"lora": {"transformers", "peft"}, "": {"peft"}}
# test and benchmark dependencies: no module of the package imports them
TEST_ONLY = {"peft", "trl"}


def _modules() -> dict[str, Path]:
    mods = {}
    for file in SRC.rglob("*.py"):
        parts = list(file.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = file
    return mods


def _imports(name: str, file: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(lorakit modules, third-party top-level packages) that `file` imports anywhere."""
    inside, outside = set(), set()
    package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(["lorakit", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names]
        for target in targets:
            if target.split(".")[0] != "lorakit":
                outside.add(target.split(".")[0])
                continue
            rel = target.removeprefix("lorakit").removeprefix(".")
            while rel not in mods and "." in rel:  # `from pkg import name`: the package
                rel = rel.rsplit(".", 1)[0]
            if rel in mods and rel != name:
                inside.add(rel)
    return inside, outside


def _graph():
    mods = _modules()
    edges, third = {}, {}
    for name, file in mods.items():
        edges[name], third[name] = _imports(name, file, mods)
    # `from lorakit.x import y` names package x and module x.y: keep the most specific
    for name, targets in edges.items():
        edges[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return mods, edges, third


def _top(module: str) -> str:
    return module.split(".")[0]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_every_package_has_a_layer():
    mods, _, _ = _graph()
    missing = sorted({_top(m) for m in mods} - set(LAYERS))
    assert not missing, f"add these to LAYERS (and docs/architecture.md): {missing}"


def test_no_import_cycles():
    _, edges, _ = _graph()
    assert _cycles(edges) == []


def test_imports_point_down_the_layers():
    _, edges, third = _graph()
    wrong = []
    for module, targets in edges.items():
        for target in targets:
            a, b = _top(module), _top(target)
            if a == b:
                continue
            if LAYERS.get(b, 99) > LAYERS.get(a, -1) or (a, b) in FORBIDDEN:
                wrong.append(f"{module} -> {target}")
    for module, packages in third.items():
        for package in {*THIRD_PARTY_FORBIDDEN.get(_top(module), ()), *TEST_ONLY}:
            if package in packages:
                wrong.append(f"{module} imports {package}")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize(
    "edges, cycles",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"c"}}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, cycles):
    assert sorted(_cycles(edges)) == cycles
