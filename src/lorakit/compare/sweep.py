"""`lorakit compare`: expand the sweep into runs, train each (or reuse / resume it), collect rows.

A sweep directory is resumable: finished runs (metrics.json with the same settings) are
reused, a killed run with checkpoints is resumed, one without is restarted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.atomic import (
    check_replaceable,
    clean_temps,
    read_marker,
    refuse_existing,
    replace_dir,
    write_json,
    writing,
)
from lorakit.compare.config import CompareConfig
from lorakit.config import LoraConfig, TrainConfig
from lorakit.device import resolve_device
from lorakit.errors import ConfigError, LorakitError, OutputExistsError, TargetNotFoundError
from lorakit.train.output_dir import protected_paths
from lorakit.train.preference import check_objective

# Leaf names of the attention query / value projections across architectures
# (BERT, Llama/Mistral/Qwen, T5, and GPT-2's fused qkv).
ATTENTION_LEAVES = ("query", "value", "q_proj", "v_proj", "q", "v", "c_attn")
CONFIG_FILE = "compare_config.json"
# Settings that may change between a sweep and its resumption: they change how it runs or
# is reported, not what is trained.
FREE_KEYS = {"overwrite", "isolate", "output", "metric"}
# What a sweep directory holds at its top level (its .lorakit-run marker lists them).
SWEEP_FILES = (CONFIG_FILE, "runs", "logs", "results.csv", "results.json", "report.md", "*.png")
_RUN_FREE = {"resume", "overwrite", "output"}
_CHILD = "import sys; from lorakit.compare.sweep import child_main; sys.exit(child_main())"


@dataclass(frozen=True)
class PlannedRun:
    name: str  # directory under DIR/runs: <group>-seed<seed>
    group: str  # the run without its seed: repetitions share it
    method: str
    targets: str | None  # the target set's name (lora / dora)
    r: int | None
    seed: int
    config: TrainConfig


def detect_attention_targets(model: torch.nn.Module) -> list[str]:
    """Leaf names of the model's attention query / value layers (e.g. ['query', 'value'])."""
    from lorakit.lora.inject import adaptable_modules

    leaves = {
        name.rsplit(".", 1)[-1]
        for name, (_, kind) in adaptable_modules(model).items()
        if kind in ("linear", "conv1d")
    }
    return [leaf for leaf in ATTENTION_LEAVES if leaf in leaves]


def resolve_target_sets(
    model_name: str, task: str, sets: dict[str, list[str] | str] | None
) -> dict[str, list[str] | str]:
    """Target sets (default: 'attention' and 'all-linear'), each checked against the model.

    Loads the model once, so a bad model name or task fails before anything is written.
    """
    from lorakit.lora import find_targets
    from lorakit.lora.inject import adaptable_modules
    from lorakit.models.load import load_model

    model, _ = load_model(model_name, task)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in adaptable_modules(model)})
    if sets is None:
        attention = detect_attention_targets(model)
        if not attention:
            raise ConfigError(
                f"found no attention query/value layers in {model_name} (looked for "
                f"{', '.join(ATTENTION_LEAVES)}) — name them in target_sets, e.g. "
                f"{{attention: [...], all-linear: all-linear}}; its layer names: {', '.join(leaves)}"
            )
        sets = {"attention": attention, "all-linear": "all-linear"}
    task_type = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    for name, targets in sets.items():
        if not find_targets(model, LoraConfig(target_modules=targets, task_type=task_type)):
            raise TargetNotFoundError(
                f"target set {name!r} ({targets!r}) matches no layer of {model_name} — use "
                f"some of these names: {', '.join(leaves)}"
            )
    return sets


def plan(config: CompareConfig, target_sets: dict[str, list[str] | str]) -> list[PlannedRun]:
    """Every run of the sweep, seed by seed (so a partial sweep already covers each method)."""
    specs: list[tuple[str, str, str | None, int | None]] = []
    if config.head_included():
        specs.append(("head", "head", None, None))
    for set_name in target_sets:
        specs += [(f"lora-{set_name}-r{r}", "lora", set_name, r) for r in config.ranks]
    if config.dora_rank is not None and target_sets:
        d, dora_set = config.dora_rank, config.dora_set(list(target_sets))
        specs.append((f"dora-{dora_set}-r{d}", "dora", dora_set, d))
    if config.full_included():
        specs.append(("full", "full", None, None))
    if not specs:
        raise ConfigError("the sweep has no runs — give ranks, dora_rank, include_full or head")
    runs_dir = Path(config.output) / "runs"
    runs = []
    for seed in range(config.seed, config.seed + config.seeds):
        for group, method, set_name, r in specs:
            fields: dict = {"method": method, "seed": seed}
            if set_name is not None:
                fields.update(r=r, targets=target_sets[set_name])
            if method == "full":
                fields["lr"] = config.full_lr  # None: TrainConfig's 5e-5 for full fine-tuning
            name = f"{group}-seed{seed}"
            cfg = config.run_config(runs_dir / name, **fields)
            check_objective(cfg)  # a run its objective cannot do: refused before any trains
            runs.append(PlannedRun(name, group, method, set_name, r, seed, cfg))
    return runs


def open_output(
    out: Path,
    filename: str,
    settings: dict,
    overwrite: bool,
    free=FREE_KEYS,
    *,
    kind: str = "compare",
    files: tuple[str, ...] = SWEEP_FILES,
    protected: dict | None = None,
) -> None:
    """Claim `out` for these settings: resume the same ones, refuse others without overwrite.

    --overwrite replaces only a lorakit output of any kind (its `.lorakit-run` marker lists
    what it may hold) that is not and does not hold `protected` ({what: path}: the data, the
    model); anything else is refused (lorakit.atomic.check_replaceable). A new directory is
    marked as a `kind` output holding `files` (and `filename`).
    """
    saved = out / filename
    if saved.is_file():
        old = json.loads(saved.read_text())
        changed = sorted(
            k for k in set(old) | set(settings) if k not in free and old.get(k) != settings.get(k)
        )
        if changed and not overwrite:
            raise OutputExistsError(
                f"{out} holds a run with other settings ({', '.join(changed)}) — re-run with the "
                "same settings to resume it, pass --overwrite to replace it (finished runs "
                "whose settings did not change are kept), or pick another --output"
            )
        if changed:  # the runs the new settings do not have will be deleted
            check_replaceable(out, protected or {})
        clean_temps(out)
        write_json(saved, settings)
        return
    refuse_existing(out, overwrite, protected or {})
    names = (filename, *(f for f in files if f != filename))
    replace_dir(out, kind, names, lambda d: write_json(d / filename, settings))


def _same_settings(out: Path, cfg: TrainConfig) -> bool:
    saved = out / "config.json"
    if not saved.is_file():
        return False
    old, new = json.loads(saved.read_text()), cfg.model_dump(mode="json")
    return all(old.get(k) == v for k, v in new.items() if k not in _RUN_FREE)


def train_or_reuse(
    cfg: TrainConfig,
    *,
    overwrite: bool = False,
    isolate: bool = False,
    log_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict, str]:
    """(metrics, 'reused' | 'resumed' | 'trained') for the run `cfg` describes."""
    from lorakit.train.checkpoint import list_checkpoints

    out = Path(cfg.output)
    same = _same_settings(out, cfg)
    if (out / "metrics.json").is_file():
        if same:
            return json.loads((out / "metrics.json").read_text()), "reused"
        if not overwrite:
            raise OutputExistsError(
                f"{out} holds a finished run with other settings — pass --overwrite to retrain it"
            )
    if same and list_checkpoints(out / "checkpoints"):
        cfg, status = cfg.model_copy(update={"resume": True}), "resumed"
    else:  # a fresh run, or a killed one that never reached a checkpoint
        cfg, status = cfg.model_copy(update={"overwrite": True}), "trained"
    if isolate:
        metrics = _train_in_child(cfg, log_path or out.with_suffix(".log"))
    else:
        from lorakit.train import train

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # peak_memory_mb then covers this run only
        metrics = train(cfg, log=log, progress=False)
    # A finished run is reused, never resumed: its checkpoints (for full fine-tuning, the
    # whole model and two Adam moments) would only take disk space.
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return metrics, status


def _train_in_child(cfg: TrainConfig, log_path: Path) -> dict:
    """Train in a fresh Python process: its peak memory is this run's alone."""
    with writing(log_path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    with log_file as f:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=cfg.model_dump_json(),
            text=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        last = lines[-1].removeprefix("error: ") if lines else f"exit code {proc.returncode}"
        # the child's own `what — how to fix` line, then where to read more
        raise LorakitError(
            f"run {Path(cfg.output).name} failed: {last} (log: {log_path}; re-run the same "
            "command to resume the sweep)"
        )
    return json.loads((Path(cfg.output) / "metrics.json").read_text())


def child_main() -> int:
    """Entry point of a training child: a TrainConfig as JSON on stdin."""
    from lorakit.quiet import quiet_libraries
    from lorakit.train import train

    quiet_libraries()
    cfg = TrainConfig(**json.loads(sys.stdin.read()))
    try:
        train(cfg, log=lambda line: print(line, flush=True), progress=False)
    except LorakitError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    return 0


def run_sweep(config: CompareConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or reuse) every run of the sweep, then write results, report and plots."""
    from lorakit.compare.latency import probe_inputs, run_latency
    from lorakit.compare.report import make_row, write_results

    out = Path(config.output)
    # Model, targets and data are checked before anything is written.
    target_sets = resolve_target_sets(config.model, config.task, config.target_sets)
    runs = plan(config, target_sets)
    device = resolve_device(config.device)
    probe = probe_inputs(runs[0].config, config.latency_samples)
    protected = protected_paths(runs[0].config)
    open_output(
        out, CONFIG_FILE, config.model_dump(mode="json"), config.overwrite, protected=protected
    )
    clean_temps(out / "runs")
    if config.overwrite and (out / "runs").is_dir():
        planned = {r.name for r in runs}
        for stale in (out / "runs").iterdir():
            # a run of the replaced sweep; anything lorakit did not make there stays
            if stale.name not in planned and read_marker(stale) is not None:
                shutil.rmtree(stale)
    rows, results = [], {}
    for i, run in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {run.name}")
        metrics, status = train_or_reuse(
            run.config,
            overwrite=config.overwrite,
            isolate=config.isolate,
            log_path=out / "logs" / f"{run.name}.log",
            log=lambda line: log(f"    {line}"),
        )
        run_dir = Path(run.config.output)
        cached = run_dir / "latency.json"
        if cached.is_file():
            latency = json.loads(cached.read_text())
        else:
            latency = run_latency(run_dir, run.config, probe, device)
            write_json(cached, latency)
        rows.append(make_row(run, metrics, latency))
        log(f"    {status}: {metrics['train_seconds']:.1f}s training, test {_score(metrics)}")
        # results after every run: a long sweep can be read while it goes on
        results = write_results(out, config, target_sets, rows, plots=i == len(runs))
    return results


def _score(metrics: dict) -> str:
    test = metrics.get("test", {})
    for key in ("accuracy", "reward_accuracy", "exact_match", "perplexity"):
        if test.get(key) is not None:
            return f"{key} {test[key]:.4f}"
    return "-"
