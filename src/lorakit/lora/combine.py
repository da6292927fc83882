"""add_weighted_adapter: a new adapter from a weighted combination of existing ones (peft's rules)."""

from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.layer import Adapter, LoraLayer
from lorakit.lora.registry import adapter_configs, check_known, lora_layers, saved_modules

METHODS = ("linear", "cat", "svd")


def add_weighted_adapter(
    model: nn.Module,
    weights: dict[str, float],
    new_name: str,
    method: str = "linear",
    svd_rank: int | None = None,
) -> None:
    """Add adapter `new_name` = combination of `weights` {adapter: weight}; it is not activated.

    - linear: A = sum sign(w s) sqrt|w s| A_i, B = sum sqrt|w s| B_i (needs equal ranks; as peft).
    - cat: A = [w_i s_i A_i] stacked, B = [B_i] side by side; rank = sum of ranks, exact.
    - svd: the top-`svd_rank` (default: largest rank) SVD of sum w_i s_i B_i A_i.
    The new adapter has alpha = r (scaling 1).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} — use one of {', '.join(METHODS)}")
    if not weights:
        raise ConfigError("weights is empty — pass {adapter_name: weight, ...}")
    names = list(weights)
    check_known(model, names)
    configs = adapter_configs(model)
    if new_name in configs:
        raise ConfigError(f"adapter {new_name!r} already exists — pick another name")
    if any(configs[n].use_dora for n in names):
        raise ConfigError(
            "add_weighted_adapter does not combine DoRA adapters — use plain LoRA adapters"
        )
    if len(names) == 1:
        method = "linear"
    if method == "linear":
        ranks = {max([configs[n].r, *(configs[n].rank_pattern or {}).values()]) for n in names}
        if len(ranks) != 1:
            raise ConfigError(
                f"method='linear' needs adapters of equal rank, got ranks {sorted(ranks)} — use 'cat' or 'svd'"
            )
    saved_owner = _saved_module_owner(model, names)

    new_layers: dict[str, tuple[LoraLayer, torch.Tensor, torch.Tensor]] = {}
    for path, layer in lora_layers(model).items():
        present = [(layer.adapters[n], float(weights[n])) for n in names if n in layer.adapters]
        if present:
            A, B = _combine(present, method, svd_rank)
            new_layers[path] = (layer, A, B)

    ranks = {path: A.shape[0] for path, (_, A, _) in new_layers.items()}
    r = max(ranks.values())
    base = configs[names[0]]
    config = base.model_copy(
        update=dict(
            r=r,
            alpha=r,
            use_rslora=False,
            use_dora=False,
            init="gaussian",
            target_modules=list(new_layers),
            rank_pattern={re.escape(p): k for p, k in ranks.items() if k != r} or None,
            alpha_pattern={re.escape(p): k for p, k in ranks.items() if k != r} or None,
            modules_to_save=configs[saved_owner].modules_to_save if saved_owner else None,
        )
    )
    for layer, A, B in new_layers.values():
        ad = Adapter(A.shape[1], B.shape[0], A.shape[0], A.shape[0], dtype=A.dtype)
        with torch.no_grad():
            ad.A.copy_(A)
            ad.B.copy_(B)
        ad.requires_grad_(False)
        layer.add_adapter(new_name, ad)
    if saved_owner:
        for wrapper in saved_modules(model).values():
            if saved_owner in wrapper.copies:
                wrapper.copies[new_name] = copy.deepcopy(
                    wrapper.copies[saved_owner]
                ).requires_grad_(False)
    configs[new_name] = config


@torch.no_grad()
def _combine(present: list[tuple[Adapter, float]], method: str, svd_rank: int | None):
    if method == "cat":
        A = torch.cat([w * ad.scaling * ad.A for ad, w in present], dim=0)
        B = torch.cat([ad.B for ad, _ in present], dim=1)
        return A, B
    if method == "linear":
        A = sum(
            math.copysign(math.sqrt(abs(w * ad.scaling)), w * ad.scaling) * ad.A
            for ad, w in present
        )
        B = sum(math.sqrt(abs(w * ad.scaling)) * ad.B for ad, w in present)
        return A, B
    delta = sum(w * ad.delta_weight() for ad, w in present)  # [out, in]
    rank = min(svd_rank or max(ad.r for ad, _ in present), *delta.shape)
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
    dtype = present[0][0].A.dtype
    return Vh[:rank].to(dtype), (U[:, :rank] * S[:rank]).to(dtype)


def _saved_module_owner(model: nn.Module, names: list[str]) -> str | None:
    owners = {n for m in saved_modules(model).values() for n in names if n in m.copies}
    if len(owners) > 1:
        raise ConfigError(
            f"adapters {sorted(owners)} each carry modules_to_save — combine at most one such adapter"
        )
    return next(iter(owners), None)
