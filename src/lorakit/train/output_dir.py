"""A run's output directory: what it holds, what --overwrite must not delete, and the
checks before any work (overwrite / resume); created only once inputs validate."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from lorakit.atomic import clean_temps, refuse_existing, replace_dir, write_json
from lorakit.config import TrainConfig
from lorakit.errors import ConfigError, LorakitError
from lorakit.train.fingerprint import FILE as FINGERPRINT
from lorakit.train.fingerprint import check_fingerprint, data_files, run_fingerprint

# Fields that may differ between a run and its resumption (checkpoints hold whole tensors,
# so a DDP, FSDP or single-process run resumes any other).
_RESUME_FREE = {
    "resume",
    "overwrite",
    "output",
    "device",
    "distributed",
    "activation_checkpointing",  # recomputation changes memory, not results
    "release_memory",  # the allocator's policy: memory and time, not results
    "eval_every",
    "save_every",
    "keep_last",
}


# What a run directory holds at its top level (the marker lists it: --overwrite refuses a
# run directory holding anything else).
RUN_FILES = (
    "config.json",
    FINGERPRINT,
    "metrics.json",
    "train_log.csv",
    "*.png",
    "adapter",
    "model",
    "checkpoints",
    "tensorboard",
    "latency.json",  # lorakit compare's, per run
)


def protected_paths(config: TrainConfig) -> dict[str, Path | None]:
    """What an --overwrite of this run's output must never delete: its data, model and init
    adapter."""
    from lorakit.models.paths import cache_dir

    paths: dict[str, Path | None] = {"lorakit's cache": cache_dir()}
    for source in config.data:
        what = "the training data" + (f" ({source})" if len(config.data) > 1 else "")
        with contextlib.suppress(LorakitError):  # a bad name fails later, with its own message
            paths[what] = (
                next(iter(data_files(source).values()))
                if source == "tweets"
                else Path(source).expanduser()
            )
    with contextlib.suppress(LorakitError):
        from lorakit.models.load import resolve_model

        paths["the base model"] = resolve_model(config.model).path
    if config.init_adapter is not None:  # e.g. --output runs/sft --init-adapter runs/sft/adapter
        paths["the init adapter"] = Path(config.init_adapter).expanduser()
    return paths


def check_output(config: TrainConfig) -> Path:
    """Refuse early (before any work) a run that would overwrite or cannot resume."""
    out = Path(config.output)
    saved = out / "config.json"
    if config.resume:
        if not saved.is_file():
            raise LorakitError(
                f"nothing to resume in {out} (no config.json) — drop --resume to start a new run"
            )
        old = json.loads(saved.read_text())
        new = config.model_dump(mode="json")
        # a field newer than the run (e.g. quantize) ran at its default
        defaults = {k: f.default for k, f in TrainConfig.model_fields.items()}
        changed = sorted(
            k for k in new if k not in _RESUME_FREE and old.get(k, defaults.get(k)) != new[k]
        )
        if changed:
            raise ConfigError(
                f"--resume with a different config ({', '.join(changed)}) — resume with the run's own "
                f"settings (see {saved}) or start a new run in another --output"
            )
        check_fingerprint(out, config)
    else:
        refuse_existing(
            out, config.overwrite, lambda: protected_paths(config), "--resume to continue it"
        )
    return out


def create_output(config: TrainConfig, fingerprint: dict | None = None) -> Path:
    """Make the run directory (marker, fingerprint.json, config.json), or reopen it to resume.

    An old run that --overwrite replaces is deleted only once the new directory and its
    first files are written; until then (and on any error) it stays as it was. A resumed
    run loses what a killed writer left (lorakit's temp names, in it and its checkpoints).
    """
    out = check_output(config)
    if config.resume:
        clean_temps(out)
        clean_temps(out / "checkpoints")
        return out
    prints = fingerprint if fingerprint is not None else run_fingerprint(config)

    def first_files(directory: Path) -> None:
        write_json(directory / FINGERPRINT, prints)  # before config.json: a run has both
        write_json(directory / "config.json", config.model_dump(mode="json"))

    return replace_dir(out, "train", RUN_FILES, first_files)
