"""Run set-up: output directory rules, device, model + method (lora / dora / full / head)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from lorakit.allocator import large_blocks_returned
from lorakit.atomic import check_replaceable, clean_temps, replace_dir
from lorakit.config import TrainConfig
from lorakit.errors import ConfigError, LorakitError, OutputExistsError
from lorakit.lora import inject
from lorakit.train.fingerprint import FILE as FINGERPRINT
from lorakit.train.fingerprint import check_fingerprint, data_files, run_fingerprint
from lorakit.train.outputs import write_json

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
    """What an --overwrite of this run's output must never delete: its data and model."""
    from lorakit.models.paths import cache_dir

    paths: dict[str, Path | None] = {"lorakit's cache": cache_dir()}
    with contextlib.suppress(LorakitError):  # a bad name fails later, with its own message
        paths["the training data"] = (
            next(iter(data_files(config.data).values()))
            if config.data == "tweets"
            else Path(config.data).expanduser()
        )
    with contextlib.suppress(LorakitError):
        from lorakit.models.load import resolve_model

        paths["the base model"] = resolve_model(config.model).path
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
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not config.overwrite:
            raise OutputExistsError(
                f"{out} already exists — pass --overwrite to replace it, or --resume to continue it"
            )
        check_replaceable(out, protected_paths(config))
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible — use --device cpu or auto")
    return torch.device(name)


def wants_release_memory(config: TrainConfig, device: torch.device) -> bool:
    """`release_memory` resolved: None means on for a CPU run that asked for low memory in
    another way (quantize, activation_checkpointing)."""
    if config.release_memory is not None:
        return config.release_memory
    low = config.quantize != "none" or config.activation_checkpointing
    return device.type == "cpu" and low


def memory_policy(config: TrainConfig):
    """Context for a whole run: freed CPU memory goes back to the system while it lasts when
    `wants_release_memory` (see lorakit/allocator.py). Yields whether the policy is on."""
    return large_blocks_returned(wants_release_memory(config, resolve_device(config.device)))


def head_name(model: nn.Module, task: str) -> str:
    """The output head's module name: a classifier ('classifier', 'score', ...) or the LM head."""
    if task == "causal-lm":
        head = model.get_output_embeddings()
        return next(n for n, m in model.named_modules() if m is head)
    for name in ("classifier", "score", "head", "classification_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ConfigError(f"cannot find the classification head of {type(model).__name__}")


def apply_method(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Make exactly the parameters of `config.method` trainable (the fair-comparison switch)."""
    _method(model, config)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in backward (transformers' per-layer checkpoints).

    Non-reentrant torch.utils.checkpoint: it works with frozen inputs (LoRA) and keeps the
    RNG state, so a run with dropout gives the same numbers with or without it.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{type(model).__name__} does not support activation checkpointing — "
            "drop --activation-checkpointing"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _method(model: nn.Module, config: TrainConfig) -> nn.Module:
    if config.model_dropout is not None:
        # Every nn.Dropout of the model; attention implementations read the same modules' p.
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.model_dropout
    if config.method in ("lora", "dora"):
        saved = [head_name(model, config.task)] if config.task == "classification" else None
        inject(model, config.lora_config(modules_to_save=saved))
        if config.quantize != "none":  # after inject: LoRA layers wrap the quantized bases
            from lorakit.models.quantize import quantize

            quantize(model, config.quantize)
        return model
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    head = model.get_submodule(head_name(model, config.task))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return model
