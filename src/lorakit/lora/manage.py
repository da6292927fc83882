"""Choosing, listing, deleting and disabling adapters; counting parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from lorakit.errors import AdapterNotFoundError, ConfigError
from lorakit.lora.inject import _set_module, adapter_configs
from lorakit.lora.layer import LoraLayer
from lorakit.lora.saved_module import ModulesToSave


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _wrappers(model: nn.Module) -> list[LoraLayer | ModulesToSave]:
    return [m for m in model.modules() if isinstance(m, LoraLayer | ModulesToSave)]


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters on the model, in the order they were added."""
    return list(adapter_configs(model))


def active_adapters(model: nn.Module) -> list[str]:
    return list(model.__dict__.get("_lorakit_active", []))


def _check_known(model: nn.Module, names: list[str]) -> None:
    known = list_adapters(model)
    for name in names:
        if name not in known:
            raise AdapterNotFoundError(
                f"no adapter named {name!r} — loaded adapters: {known or 'none'}"
            )


def set_adapter(model: nn.Module, name: str | list[str] | None) -> None:
    """Make `name` the active adapter; a list sums several; None runs the base alone.

    Only changes which adapters forward uses; trainability is set by inject / load_adapter.
    """
    names = [] if name is None else [name] if isinstance(name, str) else list(name)
    _check_known(model, names)
    for m in _wrappers(model):
        m.active = list(names)
    model.__dict__["_lorakit_active"] = list(names)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name` everywhere; layers left with no adapter go back to plain modules."""
    _check_known(model, [name])
    layers = lora_layers(model)
    merged = [n for n, layer in layers.items() if name in layer.merged]
    if merged:
        raise ConfigError(
            f"adapter {name!r} is merged into {merged[0]} — unmerge(model) before deleting it"
        )
    for path, layer in layers.items():
        if name in layer.adapters:
            layer.remove_adapter(name)
            if not layer.adapters:
                _set_module(model, path, layer.base_layer)
    for path, wrapper in [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSave)]:
        if name in wrapper.copies:
            del wrapper.copies[name]
            if not len(wrapper.copies):
                _set_module(model, path, wrapper.original_module)
    del adapter_configs(model)[name]
    set_adapter(model, [n for n in active_adapters(model) if n != name])


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model alone inside the block (adapters must not be merged)."""
    merged = sorted({n for layer in lora_layers(model).values() for n in layer.merged})
    if merged:
        raise ConfigError(f"adapters {merged} are merged into the weights — unmerge(model) first")
    wrappers = _wrappers(model)
    previous = [m.disabled for m in wrappers]
    for m in wrappers:
        m.disabled = True
    try:
        yield
    finally:
        for m, state in zip(wrappers, previous, strict=True):
            m.disabled = state


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once, as in peft."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_line(model: nn.Module) -> str:
    trainable, total = trainable_parameters(model)
    pct = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"


def print_trainable_parameters(model: nn.Module) -> None:
    """Print peft's exact line: `trainable params: N || all params: M || trainable%: P`."""
    print(trainable_line(model))
