"""Deleting and disabling adapters; counting parameters (choosing and listing: registry)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.registry import (
    active_adapters,
    adapter_configs,
    check_known,
    lora_layers,
    lora_modules,
    saved_modules,
    set_adapter,
    set_module,
)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name` everywhere; layers left with no adapter go back to plain modules."""
    check_known(model, [name])
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
                set_module(model, path, layer.base_layer)
    for path, wrapper in saved_modules(model).items():
        if name in wrapper.copies:
            del wrapper.copies[name]
            if not len(wrapper.copies):
                set_module(model, path, wrapper.original_module)
    del adapter_configs(model)[name]
    set_adapter(model, [n for n in active_adapters(model) if n != name])


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model alone inside the block (adapters must not be merged)."""
    merged = sorted({n for layer in lora_layers(model).values() for n in layer.merged})
    if merged:
        raise ConfigError(f"adapters {merged} are merged into the weights — unmerge(model) first")
    wrappers = lora_modules(model)
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
