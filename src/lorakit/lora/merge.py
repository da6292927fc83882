"""Merging adapters into base weights, and back. Always explicit, never a side effect.

A quantized base (lorakit.models.quantize) holds codes, not a weight to add B A to: merging
into it is refused; `dequantize(model)` first turns it back into plain layers."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.layer import LoraLayer, is_quantized, refuse_quantized
from lorakit.lora.registry import (
    active_adapters,
    adapter_configs,
    check_known,
    lora_layers,
    saved_modules,
    set_adapter,
    set_module,
)


@torch.no_grad()
def merge_layer(layer: LoraLayer, name: str) -> None:
    """W <- W + scaling * B A (DoRA: W <- m / ||W + scaling * B A|| * (W + scaling * B A))."""
    refuse_quantized(layer.base_layer, f"merge adapter {name!r} into its layer", _FIX)
    ad = layer.adapters[name]
    W = layer.weight_linear  # [out, in] view of the base weight
    delta = ad.delta_weight().to(torch.float32)
    if ad.use_dora:
        norm = ad.dora_norm(W)
        ad.__dict__["_merge_norm"] = norm  # to invert exactly in unmerge
        W.copy_(((ad.magnitude.float() / norm)[:, None] * (W.float() + delta)).to(W.dtype))
    else:
        W.add_(delta.to(W.dtype))
    layer.merged.append(name)


@torch.no_grad()
def unmerge_layer(layer: LoraLayer, name: str) -> None:
    ad = layer.adapters[name]
    W = layer.weight_linear
    delta = ad.delta_weight().to(torch.float32)
    if ad.use_dora:
        norm = ad.__dict__.pop("_merge_norm")
        W.copy_((W.float() * (norm / ad.magnitude.float())[:, None] - delta).to(W.dtype))
    else:
        W.sub_(delta.to(W.dtype))
    layer.merged.remove(name)


_FIX = (
    "call lorakit.models.quantize.dequantize(model) first, or merge into the unquantized "
    "base (`lorakit merge` loads it from disk)"
)


def _refuse_quantized_targets(model: nn.Module, names: list[str]) -> None:
    """Check every layer before merging any, so a refusal leaves the model as it was."""
    for path, layer in lora_layers(model).items():
        if any(n in layer.adapters and n not in layer.merged for n in names):
            refuse_quantized(layer.base_layer, f"merge into {path}", _FIX)


def _parameter_owners(model: nn.Module) -> Counter:
    """How many modules hold each parameter tensor (tied weights are held by two)."""
    return Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))


def _untie(model: nn.Module, layer: LoraLayer, owners: Counter) -> None:
    """Give `layer` its own copy of a weight it shares (tied embeddings / LM head).

    Merging into a shared tensor would silently change the other module too. After
    untying, the model's config says so, so save_pretrained + from_pretrained keep both.
    `owners` (from _parameter_owners, counted once per merge) is updated in place.
    """
    weight = layer.base_layer.weight
    if owners[id(weight)] <= 1:
        return
    owners[id(weight)] -= 1
    layer.base_layer.weight = nn.Parameter(
        weight.detach().clone(), requires_grad=weight.requires_grad
    )
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False
        text_config = getattr(config, "get_text_config", lambda: None)()
        if text_config is not None and hasattr(text_config, "tie_word_embeddings"):
            text_config.tie_word_embeddings = False


def merge(model: nn.Module, adapter: str | None = None) -> None:
    """Fold `adapter` (default: the active adapters) into the base weights.

    Forward then skips the merged adapters, so outputs are unchanged and cost nothing extra.
    """
    names = [adapter] if adapter is not None else active_adapters(model)
    check_known(model, names)
    if not names:
        raise ConfigError("no adapter to merge — pass adapter=... or set_adapter() first")
    _refuse_quantized_targets(model, names)
    owners = _parameter_owners(model)
    for layer in lora_layers(model).values():
        for name in names:
            if name in layer.adapters and name not in layer.merged:
                _untie(model, layer, owners)
                merge_layer(layer, name)


def unmerge(model: nn.Module) -> None:
    """Undo every merge (last merged first), restoring the base weights."""
    for layer in lora_layers(model).values():
        for name in reversed(list(layer.merged)):
            unmerge_layer(layer, name)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and return the model with plain torch modules only.

    Inactive adapters are dropped; modules_to_save are replaced by the active adapter's copy.
    A model with quantized modules is refused: "plain torch modules" would be a lie.
    """
    quantized = [n for n, m in model.named_modules() if is_quantized(m)]
    if quantized:
        raise ConfigError(
            f"cannot merge_and_unload: the model has quantized modules ({quantized[0]}, "
            f"{len(quantized)} in all) — {_FIX}"
        )
    active = active_adapters(model)
    if active:
        merge(model)
    for path, layer in lora_layers(model).items():
        for name in [n for n in layer.adapters if n not in layer.merged]:
            layer.remove_adapter(name)  # restores a PiSSA residual's principal part
        set_module(model, path, layer.base_layer)
    for path, wrapper in saved_modules(model).items():
        wrapper.disabled = False
        set_module(model, path, wrapper.current())
    adapter_configs(model).clear()
    set_adapter(model, None)
    return model
