"""A quantized frozen base (the QLoRA idea): int8 or NF4 weights under full-precision adapters.

`quantize(model, "int8" | "nf4")` runs after LoRA injection. Every exact `nn.Linear` and
`nn.Embedding` whose weight is frozen (LoRA layers' `base_layer` included) is replaced by a
module with the same features, bias and forward that stores its weight as codes:

  int8  symmetric, one scale per output channel (per row):  W ≈ q * scale[:, None]
  nf4   4-bit NormalFloat (Dettmers et al. 2023): 16 quantiles of N(0, 1) in [-1, 1],
        one absmax per block of 64 weights, two 4-bit codes per byte.

Embeddings and the output head are int8 (per row) in both modes: a tied LM head shares the
embedding's int8 rows, and the logits are the most sensitive matmul of the model. Adapters,
modules_to_save, norms and anything trainable stay in full precision. Forward dequantizes
one layer at a time (a large one, like the LM head, a block of output rows at a time);
backward dequantizes again instead of keeping the weight (`_FrozenMatmul`), so training never
holds more than one full-precision base weight, or block of one, at once.

Quantized modules follow a small protocol that `lorakit.lora` reads by duck typing (lora/
never imports this file): `quant_type`, `lora_kind`, `codes` (the tensor holding the weight)
and `dequantized()` (the weight in its usual layout, a fresh tensor). There is no `weight`, so
nothing can edit it in place by mistake: merge and PiSSA's residual refuse a quantized base;
`dequantize(model)` turns the modules back into plain `nn.Linear` / `nn.Embedding`.

Plain torch, so the same code runs on CPU and CUDA. bitsandbytes' kernels are deliberately
not used: lorakit cannot test them offline, and the layout here is what `dequantize` and the
adapter math read.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.allocator import release_freed
from lorakit.errors import ConfigError
from lorakit.lora.layer import LoraLayer, is_quantized
from lorakit.lora.saved_module import ModulesToSave

MODES = ("int8", "nf4")
NF4_BLOCK = 64
# The NF4 code book of the QLoRA paper (appendix E; bitsandbytes' values), ascending.
# fmt: off
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
# fmt: on
_TINY = 1e-30  # absmax of an all-zero row / block: codes are 0 either way
_CHUNK = 1 << 22  # weights quantized per step: temporaries stay at tens of MB for any matrix


# -- the math ------------------------------------------------------------------------------
def quantize_int8(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 [rows, cols], scale [rows] in W's dtype), W ≈ q * scale."""
    W = W.detach()
    q = torch.empty(W.shape, dtype=torch.int8, device=W.device)
    scale = torch.empty(W.shape[0], dtype=W.dtype, device=W.device)
    rows = max(1, _CHUNK // max(W.shape[1], 1))
    for s in range(0, W.shape[0], rows):
        w = W[s : s + rows].float()
        # the stored (possibly bf16) scale is the one the codes are rounded against
        scale[s : s + rows] = step = (w.abs().amax(dim=1) / 127).to(W.dtype)
        q[s : s + rows] = torch.round(w / step.float().clamp(min=_TINY)[:, None]).clamp_(-127, 127)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=None) -> torch.Tensor:
    dtype = dtype or scale.dtype
    return q.to(dtype).mul_(scale.to(dtype)[:, None])  # in place: one weight-sized tensor


def quantize_nf4(W: torch.Tensor, block: int = NF4_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 [n_padded / 2], absmax [n_blocks] in W's dtype) over W flattened.

    Each block of `block` (even) weights is divided by its absmax and rounded to the nearest
    NF4 value; the last block is zero-padded. Code 2i goes in the high nibble of byte i.
    """
    flat = W.detach().reshape(-1)
    n_blocks = -(-flat.numel() // block)
    packed = torch.empty(n_blocks * block // 2, dtype=torch.uint8, device=W.device)
    absmax = torch.empty(n_blocks, dtype=W.dtype, device=W.device)
    code = torch.tensor(NF4_CODE, device=W.device)
    mids = (code[1:] + code[:-1]) / 2
    step = max(1, _CHUNK // block)  # blocks per step
    for b in range(0, n_blocks, step):
        x = flat[b * block : (b + step) * block].float()
        x = F.pad(x, (0, (-x.numel()) % block)).view(-1, block)  # [blocks, block]
        absmax[b : b + len(x)] = top = x.abs().amax(dim=1).to(W.dtype)
        idx = torch.bucketize(x / top.float().clamp(min=_TINY)[:, None], mids, out_int32=True)
        idx = idx.to(torch.uint8).view(-1)
        packed[b * block // 2 : (b + len(x)) * block // 2] = (idx[0::2] << 4) | idx[1::2]
    return packed, absmax


_PAIRS: dict[tuple, torch.Tensor] = {}


def _pair_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 2]: a byte's two NF4 values. One gather per byte beats two per nibble (~2.5x)."""
    key = (device, dtype)
    if key not in _PAIRS:
        code = torch.tensor(NF4_CODE, dtype=torch.float32)
        pairs = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)
        _PAIRS[key] = pairs.to(device=device, dtype=dtype)
    return _PAIRS[key]


def dequantize_nf4(
    packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], dtype=None
) -> torch.Tensor:
    dtype = dtype or absmax.dtype
    values = _pair_table(packed.device, dtype).index_select(0, packed.int())  # [n_padded/2, 2]
    values = values.view(absmax.numel(), -1).mul_(absmax.to(dtype)[:, None])  # [blocks, block]
    n = torch.Size(shape).numel()
    return values.view(-1)[:n].view(shape)


# -- the modules ---------------------------------------------------------------------------
class _FrozenMatmul(torch.autograd.Function):
    """x @ W.T for a quantized W that keeps nothing of W for backward: backward dequantizes
    again. F.linear on a dequantized weight would save that full-precision copy in the
    graph of every layer — the whole base in fp32 again, until backward."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.x_dtype = layer, x.dtype
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.layer.matmul_grad(grad).to(ctx.x_dtype), None


class _QuantLinear(nn.Module):
    """Shared forward of the quantized Linears: x @ W.T + bias (bias: the original Parameter)."""

    lora_kind = "linear"
    quant_type = ""

    def __init__(self, in_features: int, out_features: int, bias: nn.Parameter | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenMatmul.apply(x, self) if x.requires_grad else self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    # A weight above _CHUNK elements (an LM head: 28M for SmolLM2, 525M for a 128k vocabulary
    # at 4096) is dequantized _CHUNK elements of output rows at a time, so the full-precision
    # temporary stays at tens of MB whatever the layer; smaller ones in one piece.
    def row_blocks(self) -> list[slice]:
        step = max(1, _CHUNK // max(self.in_features, 1))
        return [
            slice(s, min(s + step, self.out_features)) for s in range(0, self.out_features, step)
        ]

    def rows(self, block: slice, dtype=None) -> torch.Tensor:
        return self.dequantized(dtype)[block]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.row_blocks()
        if len(blocks) == 1:
            return F.linear(x, self.dequantized(x.dtype))
        y = x.new_empty(*x.shape[:-1], self.out_features)
        for b in blocks:
            y[..., b] = F.linear(x, self.rows(b, x.dtype))
        return y

    def matmul_grad(self, grad: torch.Tensor) -> torch.Tensor:
        blocks = self.row_blocks()
        if len(blocks) == 1:
            return grad @ self.dequantized(grad.dtype)
        g = grad.reshape(-1, self.out_features)
        out = g.new_zeros(g.shape[0], self.in_features)
        for b in blocks:
            out.addmm_(g[:, b], self.rows(b, grad.dtype))
        return out.view(*grad.shape[:-1], self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {self.quant_type}"
        )


class Int8Linear(_QuantLinear):
    """A frozen Linear as int8 rows + one scale per output channel.

    `tied_to`: an Int8Embedding whose rows this layer reads (a tied LM head): one copy of
    the codes, and `.to(device)` moves it once, through the embedding that owns it.
    """

    quant_type = "int8"

    def __init__(self, q=None, scale=None, bias=None, tied_to: Int8Embedding | None = None):
        rows = q if tied_to is None else tied_to.qweight  # [out, in]
        super().__init__(rows.shape[1], rows.shape[0], bias)
        if tied_to is None:
            self.register_buffer("qweight", q)
            self.register_buffer("scale", scale)
        self.__dict__["tied_to"] = tied_to  # not a submodule: the embedding lives elsewhere

    def _codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        owner = self.tied_to if self.tied_to is not None else self
        return owner._buffers["qweight"], owner._buffers["scale"]

    @property
    def codes(self) -> torch.Tensor:
        return self._codes()[0]

    def dequantized(self, dtype=None) -> torch.Tensor:
        return dequantize_int8(*self._codes(), dtype)

    def rows(self, block: slice, dtype=None) -> torch.Tensor:
        q, scale = self._codes()
        return dequantize_int8(q[block], scale[block], dtype)

    # The scale factors out of the matmul: the weight is only converted, never multiplied.
    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.row_blocks()) > 1:
            return super().matmul(x)
        q, scale = self._codes()
        y = F.linear(x, q.to(x.dtype))  # a fresh tensor, outside autograd: scaled in place
        return y.mul_(scale.to(y.dtype))

    def matmul_grad(self, grad: torch.Tensor) -> torch.Tensor:
        if len(self.row_blocks()) > 1:
            return super().matmul_grad(grad)
        q, scale = self._codes()
        return (grad * scale.to(grad.dtype)) @ q.to(grad.dtype)


class NF4Linear(_QuantLinear):
    """A frozen Linear as NF4 codes (two per byte) + one absmax per block of 64 weights."""

    quant_type = "nf4"

    def __init__(self, packed, absmax, in_features: int, out_features: int, bias=None):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("packed", packed)
        self.register_buffer("absmax", absmax)

    @property
    def codes(self) -> torch.Tensor:
        return self.packed

    def dequantized(self, dtype=None) -> torch.Tensor:
        return dequantize_nf4(
            self.packed, self.absmax, (self.out_features, self.in_features), dtype
        )

    def row_blocks(self) -> list[slice]:
        # rows start on an NF4 block only if a row is whole blocks; otherwise one piece
        return super().row_blocks() if self.in_features % NF4_BLOCK == 0 else [slice(None)]

    def rows(self, block: slice, dtype=None) -> torch.Tensor:
        first, last = (
            block.start * self.in_features // NF4_BLOCK,
            block.stop * self.in_features // NF4_BLOCK,
        )
        return dequantize_nf4(
            self.packed[first * NF4_BLOCK // 2 : last * NF4_BLOCK // 2],
            self.absmax[first:last],
            (block.stop - block.start, self.in_features),
            dtype,
        )


class Int8Embedding(nn.Module):
    """A frozen Embedding as int8 rows + one scale per row (per token)."""

    lora_kind = "embedding"
    quant_type = "int8"

    def __init__(self, q, scale, base: nn.Embedding):
        super().__init__()
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.num_embeddings, self.embedding_dim = q.shape
        # what F.embedding callers (LoraLayer._embed) read from the base
        self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, None, base.norm_type
        self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse

    @property
    def codes(self) -> torch.Tensor:
        return self.qweight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight).to(self.scale.dtype)  # [..., dim]
        return rows * F.embedding(ids, self.scale[:, None])  # [..., 1]: each token's scale

    def dequantized(self, dtype=None) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scale, dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


# -- whole models --------------------------------------------------------------------------
def _frozen(module: nn.Module) -> bool:
    return not module.weight.requires_grad


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every exact nn.Linear / nn.Embedding with a frozen weight, outside
    modules_to_save. Exact types: subclasses (e.g. MultiheadAttention's out_proj) are read
    by their owners through `.weight`."""
    found, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip):
            continue
        if isinstance(module, ModulesToSave):
            skip.append(name + ".")
        elif type(module) is nn.Linear and _frozen(module):
            found.append((name, module))
        elif type(module) is nn.Embedding and _frozen(module) and module.max_norm is None:
            found.append((name, module))  # max_norm would renormalise the weight in place
    return found


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head.base_layer if isinstance(head, LoraLayer) else head


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def quantize(model: nn.Module, mode: str) -> nn.Module:
    """Replace the frozen base's Linear / Embedding weights by `mode` codes, in place.

    Run it after `inject` (LoRA layers then wrap quantized bases) and before the optimizer
    is built. Returns `model`. Full-precision tensors that still point into a memory-mapped
    checkpoint file are copied out, so the file mapping — and the fp32 pages it kept
    resident — is released.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown quantization {mode!r} — use one of: {', '.join(MODES)}")
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and layer.merged:
            raise ConfigError(
                f"adapters {layer.merged} are merged into {name} — unmerge(model) before quantizing"
            )
    head = _output_head(model)
    targets = _targets(model)
    if not targets:
        raise ConfigError(
            "nothing to quantize: no frozen nn.Linear or nn.Embedding is left — inject LoRA "
            "first (it freezes the base), or requires_grad_(False) the weights to quantize"
        )
    embeddings: dict[int, Int8Embedding] = {}  # id(fp weight) -> its int8 module
    for path, module in targets:
        if isinstance(module, nn.Embedding):
            new = Int8Embedding(*quantize_int8(module.weight), module)
            embeddings[id(module.weight)] = new
            _set(model, path, new)
            _page_out(module.weight)
    for path, module in targets:
        if not isinstance(module, nn.Linear):
            continue
        tied = embeddings.get(id(module.weight))
        if tied is not None:  # a tied LM head reads the embedding's rows
            new = Int8Linear(bias=module.bias, tied_to=tied)
        elif mode == "int8" or module is head:
            new = Int8Linear(*quantize_int8(module.weight), module.bias)
        else:
            packed, absmax = quantize_nf4(module.weight)
            new = NF4Linear(packed, absmax, module.in_features, module.out_features, module.bias)
        _set(model, path, new)
        _page_out(module.weight)
    _own_remaining(model)
    release_freed()  # the fp32 chunks read above would otherwise stay in the C heap
    return model


_MADV_PAGEOUT = 21  # Linux >= 5.4


def _page_out(t: torch.Tensor) -> None:
    """Ask the kernel to reclaim the pages of a weight that views a memory-mapped checkpoint,
    once its codes exist: without this, quantizing reads every fp32 page and all of them stay
    resident until the last one is done (a load-time peak of the whole fp32 model). A hint
    that never loses data: clean file pages are read again if touched, changed ones are kept
    (or swapped). Errors (older kernels, other systems) are ignored."""
    if t.device.type != "cpu" or t.untyped_storage().resizable() or sys.platform != "linux":
        return
    page = mmap.PAGESIZE
    start = -(-t.data_ptr() // page) * page  # whole pages inside the tensor only
    end = (t.data_ptr() + t.numel() * t.element_size()) // page * page
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


def _own_remaining(model: nn.Module) -> None:
    """Copy tensors that are views of a memory-mapped file (safetensors loads that way; such
    storages are not resizable). One live view keeps the whole mapping, and every page of it
    ever read, resident: without this the freed fp32 weights would stay in RSS."""
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and not p.untyped_storage().resizable():
                p.data = p.data.clone()  # same Parameter object: ties and requires_grad kept
        for name, b in module._buffers.items():
            if b is not None and not b.untyped_storage().resizable():
                module._buffers[name] = b.clone()


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Turn every quantized module back into a plain, frozen nn.Linear / nn.Embedding, in place.

    The weights are the dequantized codes (what training saw), so a merge afterwards gives
    exactly the model that was trained. A tied LM head is tied again. Returns `model`.
    """
    found = [(n, m) for n, m in model.named_modules() if is_quantized(m)]
    plain: dict[int, nn.Parameter] = {}  # id(quantized embedding) -> its new weight
    for path, module in found:
        if isinstance(module, Int8Embedding):
            new = nn.Embedding(
                module.num_embeddings,
                module.embedding_dim,
                padding_idx=module.padding_idx,
                norm_type=module.norm_type,
                scale_grad_by_freq=module.scale_grad_by_freq,
                sparse=module.sparse,
                _weight=module.dequantized(),
                _freeze=True,
            )
            plain[id(module)] = new.weight
            _set(model, path, new)
    for path, module in found:
        if isinstance(module, Int8Embedding):
            continue
        tied = getattr(module, "tied_to", None)
        weight = plain.get(id(tied))  # the embedding's new weight: tied again
        if weight is None:
            weight = nn.Parameter(module.dequantized(), requires_grad=False)
        new = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        new.weight, new.bias = weight, module.bias
        _set(model, path, new)
    return model


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """path -> quantized module, for every one in the model."""
    return {n: m for n, m in model.named_modules() if is_quantized(m)}


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage counted once (tied weights)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
