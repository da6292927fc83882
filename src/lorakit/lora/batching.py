"""Many adapters in one forward: row i of the batch uses adapter names[i] (None = base).

Each LoRA layer's adapters are stacked into a *bank* (slot 0 = zeros for base rows,
ranks zero-padded to the largest): A_bank [S, r_max, in], B_bank [S, out, r_max] with
the scaling folded in. A forward gathers each row's slot and runs two batched matmuls;
there is no Python loop over adapters or sub-batches. Banks are cached per layer and
rebuilt only when the slot list or an adapter tensor changes (tracked by tensor version).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.errors import AdapterNotFoundError, ConfigError
from lorakit.lora.layer import LoraLayer
from lorakit.lora.saved_module import ModulesToSave


@dataclass(frozen=True)
class RowPlan:
    slots: tuple[str | None, ...]  # slot 0 is None (base)
    index: torch.Tensor  # [batch] slot of each row


@dataclass
class Bank:
    key: tuple
    A: torch.Tensor  # [S, r_max, in]; embeddings: [S, in, r_max] for gathering by token id
    B: torch.Tensor  # [S, out, r_max], scaling folded in
    dora: torch.Tensor | None  # [S, out] DoRA's m / ||W'||, 1 for plain slots; None if no DoRA


def plan_rows(model: nn.Module, names: Sequence[str | None]) -> RowPlan:
    from lorakit.lora.manage import list_adapters  # manage imports this module

    known = set(list_adapters(model))
    slots: list[str | None] = [None]
    for name in names:
        if name is not None and name not in known:
            raise AdapterNotFoundError(
                f"unknown adapter {name!r} in adapter_per_row — loaded: {sorted(known) or 'none'}"
            )
        if name not in slots:
            slots.append(name)
    index = torch.tensor([slots.index(n) for n in names], dtype=torch.long)
    return RowPlan(tuple(slots), index)


@contextlib.contextmanager
def adapter_per_row(model: nn.Module, names: Sequence[str | None]) -> Iterator[None]:
    """Within the block, a forward over a batch of len(names) rows gives row i adapter names[i].

    Overrides the active adapters for the duration; merged adapters must be unmerged first.
    """
    plan = plan_rows(model, list(names))
    layers = [m for m in model.modules() if isinstance(m, LoraLayer | ModulesToSave)]
    merged = {n for m in layers if isinstance(m, LoraLayer) for n in m.merged}
    if merged:
        raise ConfigError(
            f"adapter_per_row needs unmerged adapters, but {sorted(merged)} are merged — call unmerge(model)"
        )
    previous = [m.rows for m in layers]
    for m in layers:
        m.rows = plan
    try:
        yield
    finally:
        for m, rows in zip(layers, previous, strict=True):
            m.rows = rows


def per_row_forward(layer: LoraLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = layer.base_layer(x, *args, **kwargs)
    plan = layer.rows
    if layer.disabled or len(plan.slots) == 1:
        return result
    batch = x.shape[0]
    if batch != plan.index.numel():
        raise ConfigError(
            f"adapter_per_row was given {plan.index.numel()} names but the batch has {batch} rows"
        )
    bank = _bank(layer, plan.slots)
    index = plan.index.to(x.device)
    B = bank.B[index].transpose(1, 2)  # [batch, r_max, out]
    if layer.kind == "embedding":
        ids = x.reshape(batch, -1)
        h = bank.A[index[:, None], ids]  # [batch, seq, r_max]
    else:
        x3 = x.reshape(batch, -1, x.shape[-1])  # [batch, seq, in]
        h = torch.bmm(x3.to(bank.A.dtype), bank.A[index].transpose(1, 2))  # [batch, seq, r_max]
    delta = torch.bmm(h, B)  # [batch, seq, out]
    if bank.dora is not None:
        scale = bank.dora[index][:, None, :]  # [batch, 1, out]
        bias = getattr(layer.base_layer, "bias", None)
        base = (result if bias is None else result - bias).reshape(delta.shape).to(delta.dtype)
        delta = (scale - 1) * base + scale * delta
    return result + delta.reshape(result.shape).to(result.dtype)


def _bank(layer: LoraLayer, slots: tuple[str | None, ...]) -> Bank:
    present = [(s, layer.adapters[n]) for s, n in enumerate(slots) if n in layer.adapters]
    tensors = [t for _, ad in present for t in ad.parameters()] + [layer.base_layer.weight]
    key = (slots, tuple((id(t), t._version) for t in tensors))
    cached: Bank | None = layer.__dict__.get("_bank")
    if cached is not None and cached.key == key:
        return cached
    with torch.no_grad():
        bank = _build_bank(layer, slots, present, key)
    layer.__dict__["_bank"] = bank  # plain attribute: not a buffer, never saved
    return bank


def _build_bank(layer: LoraLayer, slots, present, key) -> Bank:
    r_max = max((ad.r for _, ad in present), default=1)
    ref = present[0][1].A if present else layer.weight_linear
    n_in, n_out = layer.in_features, layer.out_features
    A = ref.new_zeros(len(slots), r_max, n_in)
    B = ref.new_zeros(len(slots), n_out, r_max)
    any_dora = any(ad.use_dora for _, ad in present)
    dora = ref.new_ones(len(slots), n_out) if any_dora else None
    W = layer.weight_linear
    for slot, ad in present:
        A[slot, : ad.r] = ad.A
        B[slot, :, : ad.r] = ad.B * ad.scaling
        if ad.use_dora:
            dora[slot] = ad.magnitude / ad.dora_norm(W).to(ad.magnitude.dtype)
    if layer.kind == "embedding":
        A = A.transpose(1, 2).contiguous()  # [S, vocab, r_max]
    return Bank(key, A, B, dora)
