"""Many adapters in one forward: row i of the batch uses adapter names[i] (None = base).

Each LoRA layer stacks all its adapters into a *bank* (ranks zero-padded to a multiple of
8, scaling folded into B): A [S, in, r_max] and B [S, r_max, out]. A forward takes the rows
that have an adapter on this layer, sorted by bank slot, and picks the cheapest kernel:
- every used slot has the same number of rows (one per adapter in a decode step, or all rows
  on one adapter): two bmm's on the bank (or on the used slots of it), the second fused
  with the add onto the base output when the rows are in batch order;
- each adapter has many token rows (prefill): `torch.nn.functional.grouped_mm`, which
  reads each adapter's weights once for all its rows;
- otherwise: gather each row's A and B from the bank, two bmm's.
Base rows skip the LoRA branch. There is no Python loop over adapters or rows.

Banks are cached per layer and rebuilt only when the layer's adapters change: another
set of names, a replaced tensor, or an in-place update (tracked by tensor version). The
check is a flat walk of the adapters' parameter dicts, cheap enough for every step. When
adapters only left and others came (a server's adapter cache swapping), the newcomers
are written into the freed slots instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import AdapterNotFoundError, ConfigError
from lorakit.lora.layer import LoraLayer, embed_scale, is_half
from lorakit.lora.registry import list_adapters, lora_modules
from lorakit.lora.saved_module import ModulesToSave

_grouped_mm = getattr(F, "grouped_mm", None)
_GROUPED_FAILED: set[tuple[str, torch.dtype]] = set()  # (device type, dtype) it refused
_GROUPED_MIN_ROWS = 16  # token rows per adapter from which grouped_mm beats gather + bmm


@dataclass
class Group:
    """The rows of one step that have an adapter on a layer whose bank holds `names`."""

    rows: torch.Tensor  # [n] batch rows, sorted by slot
    slot: torch.Tensor  # [n] each row's bank slot
    ends: torch.Tensor  # [S] int32 cumulative row counts per slot (grouped_mm's offs, seq=1)
    distinct: int  # slots with at least one row
    used: torch.Tensor  # [distinct] those slots, ascending
    uniform: int  # rows per used slot when all used slots have the same count, else 0
    all_used: bool  # every slot of the bank has a row
    in_order: bool  # the sorted rows are 0..batch-1: no gather or scatter needed


@dataclass
class RowPlan:
    """What `adapter_per_row` installs as `rows` on every LoRA module (lora.layer.PerRow):
    each batch row's adapter, and the forwards that honour it."""

    names: tuple[str | None, ...]  # adapter of each row
    slots: tuple[str | None, ...]  # distinct names, slot 0 = None (base): for ModulesToSave
    index: torch.Tensor  # [batch] slot of each row in `slots`
    groups: dict = field(default_factory=dict)  # (bank names, device) -> Group

    def group(self, bank_names: tuple[str, ...], device: torch.device) -> Group:
        key = (bank_names, device)
        cached = self.groups.get(key)
        if cached is None:
            cached = self.groups[key] = _group(self.names, bank_names, device)
        return cached

    def layer_forward(self, layer: LoraLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return per_row_forward(layer, x, *args, **kwargs)

    def saved_forward(self, wrapper: ModulesToSave, x: torch.Tensor, *args, **kwargs):
        # Per-row: heads are small, so one call per distinct adapter over its rows.
        index = self.index.to(x.device)
        out = None
        for slot, name in enumerate(self.slots):
            rows = (index == slot).nonzero().flatten()
            if rows.numel() == 0:
                continue
            module = wrapper.copies[name] if name in wrapper.copies else wrapper.original_module
            part = wrapper.call(module, x.index_select(0, rows), *args, **kwargs)
            if out is None:
                out = part.new_zeros((x.shape[0], *part.shape[1:]))
            out.index_copy_(0, rows, part)
        return out


@dataclass
class Bank:
    stamp: tuple
    names: tuple[str, ...]
    A: torch.Tensor  # [S, in, r_max]; embeddings: [S, vocab, r_max] (gathered by token id)
    B: torch.Tensor  # [S, r_max, out], scaling folded in
    dora: torch.Tensor | None  # [S, out] DoRA's m / ||W'||, 1 for plain slots; None if no DoRA
    grouped: bool  # shapes grouped_mm accepts: every row stride a multiple of 16 bytes

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype


def _group(names, bank_names, device) -> Group:
    pos = {n: i for i, n in enumerate(bank_names)}
    pairs = sorted((pos[n], row) for row, n in enumerate(names) if n in pos)
    counts = [0] * len(bank_names)
    for slot, _ in pairs:
        counts[slot] += 1
    rows = [r for _, r in pairs]
    used = [i for i, c in enumerate(counts) if c]
    sizes = {counts[i] for i in used}
    return Group(
        rows=torch.tensor(rows, dtype=torch.long, device=device),
        slot=torch.tensor([s for s, _ in pairs], dtype=torch.long, device=device),
        ends=torch.tensor(list(accumulate(counts)), dtype=torch.int32, device=device),
        distinct=len(used),
        used=torch.tensor(used, dtype=torch.long, device=device),
        uniform=sizes.pop() if len(sizes) == 1 else 0,
        all_used=len(used) == len(counts),
        in_order=rows == list(range(len(names))),
    )


def plan_rows(model: nn.Module, names: Sequence[str | None]) -> RowPlan:
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
    return RowPlan(tuple(names), tuple(slots), index)


@contextlib.contextmanager
def adapter_per_row(model: nn.Module, names: Sequence[str | None]) -> Iterator[None]:
    """Within the block, a forward over a batch of len(names) rows gives row i adapter names[i].

    Overrides the active adapters for the duration; merged adapters must be unmerged first.
    """
    layers = lora_modules(model, inside_saved=False)  # what a saved module holds runs as is
    plan = plan_rows(model, list(names))
    merged = {n for m in layers if isinstance(m, LoraLayer) for n in m.merged}
    if merged:
        raise ConfigError(
            f"adapter_per_row needs unmerged adapters, but {sorted(merged)} are merged — call unmerge(model)"
        )
    # `rows` is a plain attribute: writing __dict__ skips nn.Module.__setattr__'s checks,
    # which matter at one context per decode step.
    previous = [m.__dict__["rows"] for m in layers]
    for m in layers:
        m.__dict__["rows"] = plan
    try:
        yield
    finally:
        for m, rows in zip(layers, previous, strict=True):
            m.__dict__["rows"] = rows


def per_row_forward(layer: LoraLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = layer.base_layer(x, *args, **kwargs)
    plan: RowPlan = layer.rows
    if layer.disabled or not layer.adapters:
        return result
    batch = len(plan.names)
    # Some models flatten [batch, seq, hidden] to [batch*seq, hidden] before a layer (OPT's
    # MLP); batch-major flattening keeps each row's tokens together, so it is accepted.
    flattened = x.dim() == 2 and layer.kind != "embedding" and x.shape[0] % batch == 0
    if x.shape[0] != batch and not flattened:
        raise ConfigError(
            f"adapter_per_row was given {batch} names but the batch has {x.shape[0]} rows"
        )
    bank = _bank(layer, result.dtype)
    group = plan.group(bank.names, x.device)
    n = group.rows.numel()
    if n == 0:
        return result
    out_rows = result.reshape(batch, -1, result.shape[-1])  # [batch, seq, out]
    seq = out_rows.shape[1]
    if layer.kind == "embedding":
        ids = x.reshape(batch, -1).index_select(0, group.rows)  # [n, seq]
        h = bank.A[group.slot[:, None], ids]  # [n, seq, r_max]
        delta = torch.bmm(h, bank.B.index_select(0, group.slot))  # [n, seq, out]
        scale = embed_scale(layer.base_layer)  # Gemma's scaled embedding: the update too
        delta = delta if scale == 1.0 else delta * scale
    else:
        xs = x.reshape(batch, seq, -1)
        if not group.in_order:  # every row has an adapter, in batch order: no copy
            xs = xs.index_select(0, group.rows)
        xs = xs.to(bank.A.dtype)
        if group.uniform and group.in_order and bank.dora is None and result.dtype == xs.dtype:
            # the decode step of a server: one fused multiply-add onto the base output
            A, B = _uniform_bank(bank, group)
            h = torch.bmm(xs.reshape(group.distinct, -1, xs.shape[-1]), A)
            out = out_rows.reshape(group.distinct, -1, out_rows.shape[-1])
            return torch.baddbmm(out, h, B).view(result.shape)
        delta = _lora_delta(xs, bank, group, seq)  # [n, seq, out]
    if bank.dora is not None:
        scale = bank.dora.index_select(0, group.slot)[:, None, :]  # [n, 1, out]
        bias = getattr(layer.base_layer, "bias", None)
        base = out_rows.index_select(0, group.rows)
        base = (base if bias is None else base - bias).to(delta.dtype)
        delta = (scale - 1) * base + scale * delta
    delta = delta.reshape(n, -1).to(result.dtype)
    if group.in_order:
        return (out_rows.reshape(batch, -1) + delta).view(result.shape)
    return out_rows.reshape(batch, -1).index_add(0, group.rows, delta).view(result.shape)


def _lora_delta(xs: torch.Tensor, bank: Bank, group: Group, seq: int) -> torch.Tensor:
    """B_slot @ A_slot @ x for every row, x: [n, seq, in] sorted by slot -> [n, seq, out].

    Measured on CPU (SmolLM2 q_proj, r=8): with one row per adapter, two bmm's straight on
    the bank (82 us) beat gathering each row's A and B first (161 us), which beats
    grouped_mm (438 us, a loop over groups); grouped_mm wins once each adapter has ~16+
    token rows to reuse its weights for (prefill), and it never copies the bank.
    """
    n, _, n_in = xs.shape
    if group.uniform:  # c rows for each used slot: [slots, c * seq, in] against the bank
        A, B = _uniform_bank(bank, group)
        h = torch.bmm(xs.reshape(group.distinct, -1, n_in), A)
        return torch.bmm(h, B).view(n, seq, -1)
    key = (xs.device.type, xs.dtype)
    grads = torch.is_grad_enabled() and xs.requires_grad
    reuse = n * seq >= _GROUPED_MIN_ROWS * group.distinct
    if (
        reuse
        and bank.grouped
        and _grouped_mm is not None
        and not grads
        and key not in _GROUPED_FAILED
    ):
        ends = group.ends if seq == 1 else group.ends * seq
        try:
            h = _grouped_mm(xs.reshape(n * seq, n_in), bank.A, offs=ends)
            return _grouped_mm(h, bank.B, offs=ends).view(n, seq, -1)
        except RuntimeError:  # a dtype/device this torch has no grouped kernel for
            _GROUPED_FAILED.add(key)
    h = torch.bmm(xs, bank.A.index_select(0, group.slot))  # [n, seq, r_max]
    return torch.bmm(h, bank.B.index_select(0, group.slot))


def _uniform_bank(bank: Bank, group: Group) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank's A and B for the used slots: the bank itself when every slot is used."""
    if group.all_used:
        return bank.A, bank.B
    return bank.A.index_select(0, group.used), bank.B.index_select(0, group.used)


def _stamp(layer: LoraLayer) -> tuple:
    """What the bank depends on: the base tensor, and each adapter's name, tensor
    identities and versions (one entry per adapter, so a swap can be told from a change)."""
    base = layer.base_tensor
    adapters = []
    for name, ad in layer.adapters._modules.items():
        parts: list = [name]
        for p in ad._parameters.values():
            if p is not None:
                parts += (id(p), p._version)
        adapters.append(tuple(parts))
    return (id(base), base._version, *adapters)


def _bank(layer: LoraLayer, out_dtype: torch.dtype) -> Bank:
    stamp = _stamp(layer)
    # A half-precision base (--precision bf16) gets its bank in that dtype: the per-row
    # matmuls run in it and the activations are never cast; otherwise the adapters' own.
    dtype = out_dtype if is_half(out_dtype) else next(iter(layer.adapters.values())).A.dtype
    cached: Bank | None = layer.__dict__.get("_bank")
    if cached is not None and cached.dtype != dtype:
        cached = None
    if cached is not None and cached.stamp == stamp:
        return cached
    with torch.no_grad():
        if cached is not None and _swap_slots(layer, cached, stamp):
            return cached
        layer.__dict__.pop("_bank", None)  # free the old bank before building the new one
        bank = _build_bank(layer, stamp, dtype)
    layer.__dict__["_bank"] = bank  # plain attribute: not a buffer, never saved
    return bank


_FREE = ""  # the name of a bank slot whose adapter left (no row names it)


def _swap_slots(layer: LoraLayer, bank: Bank, stamp: tuple) -> bool:
    """Update the bank in place when adapters only left and others came in their slots
    (a server's adapter cache evicting and loading): each newcomer is written into a freed
    slot instead of restacking every adapter. False when that does not fit (more adapters
    than slots, a larger rank, DoRA, a changed base or a changed resident adapter)."""
    if stamp[:2] != bank.stamp[:2] or bank.dora is not None:
        return False
    old = {entry[0]: entry for entry in bank.stamp[2:]}
    new = {entry[0]: entry for entry in stamp[2:]}
    if any(old[n] != e for n, e in new.items() if n in old):
        return False  # an adapter that stayed was changed: restack
    added = [n for n in new if n not in old]
    free = [i for i, n in enumerate(bank.names) if n == _FREE or n not in new]
    r_max = bank.A.shape[2]
    if len(added) > len(free) or any(
        layer.adapters[n].use_dora or layer.adapters[n].r > r_max for n in added
    ):
        return False
    names = list(bank.names)
    for i in free:
        names[i] = _FREE
    for name, slot in zip(added, free, strict=False):
        ad = layer.adapters[name]
        bank.A[slot].zero_()
        bank.B[slot].zero_()
        bank.A[slot, :, : ad.r] = ad.A.T
        bank.B[slot, : ad.r] = (ad.B * ad.scaling).T
        names[slot] = name
    for slot in free[len(added) :]:  # stays free: zero, so a stale adapter is never read
        bank.A[slot].zero_()
        bank.B[slot].zero_()
    bank.names, bank.stamp = tuple(names), stamp
    return True


def _build_bank(layer: LoraLayer, stamp: tuple, dtype: torch.dtype) -> Bank:
    adapters = list(layer.adapters.items())
    # A multiple of 8: grouped_mm needs 16-byte strides, which bf16 reaches at 8.
    r_max = -(-max(ad.r for _, ad in adapters) // 8) * 8
    ref = adapters[0][1].A
    n_in, n_out = layer.in_features, layer.out_features
    A = ref.new_zeros(len(adapters), n_in, r_max, dtype=dtype)
    B = ref.new_zeros(len(adapters), r_max, n_out, dtype=dtype)
    any_dora = any(ad.use_dora for _, ad in adapters)
    dora = ref.new_ones(len(adapters), n_out, dtype=dtype) if any_dora else None
    # DoRA's norms need W; a quantized base would otherwise be dequantized for nothing
    W = layer.weight_linear if any_dora else None
    for slot, (_, ad) in enumerate(adapters):
        A[slot, :, : ad.r] = ad.A.T
        B[slot, : ad.r] = (ad.B * ad.scaling).T
        if ad.use_dora:
            dora[slot] = ad.dora_scale(W)
    grouped = all(d * A.element_size() % 16 == 0 for d in (n_in, r_max, n_out))
    return Bank(stamp, tuple(name for name, _ in adapters), A, B, dora, grouped)
