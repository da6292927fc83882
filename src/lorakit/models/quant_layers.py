"""The quantized frozen modules (int8 / NF4 Linear, int8 Embedding) that replace a base layer.

They follow the small protocol `lorakit.lora` reads by duck typing (lora/ never imports
this file): `quant_type`, `lora_kind`, `codes` (the tensor holding the weight) and
`dequantized()` (the weight in its usual layout, a fresh tensor). There is no `weight`, so
nothing can edit it in place by mistake. Forward dequantizes one layer at a time (a large
one, like the LM head, a block of output rows at a time); backward dequantizes again
instead of keeping the weight (`_FrozenMatmul`), so training never holds more than one
full-precision base weight, or block of one, at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.models.int8_kernel import (
    converted_matmul,
    packed_fits,
    packed_matmul,
    to_bf16_grid,
    usable,
)
from lorakit.models.quant_codec import CHUNK, NF4_BLOCK, dequantize_int8, dequantize_nf4


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
    inference = False  # quantize(..., inference=True): forward only, faster kernels allowed

    def __init__(self, in_features: int, out_features: int, bias: nn.Parameter | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenMatmul.apply(x, self) if x.requires_grad else self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    # A weight above CHUNK elements (an LM head: 28M for SmolLM2, 525M for a 128k vocabulary
    # at 4096) is dequantized CHUNK elements of output rows at a time, so the full-precision
    # temporary stays at tens of MB whatever the layer; smaller ones in one piece.
    def row_blocks(self) -> list[slice]:
        step = max(1, CHUNK // max(self.in_features, 1))
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
    # A model quantized for inference runs a few rows (a decode step) through torch's int8
    # kernel where it measured faster (models/int8_kernel.py): no full-precision copy at all.
    # Not keyed on grad mode: autograd Functions (the chunked cross-entropy) run their
    # forward with grad off, and training must not depend on a step's row count.
    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self._codes()
        if self.inference and packed_fits(x, q):
            return packed_matmul(x, q, scale)
        if self.inference and usable(x, q):  # more rows: convert, with the packed roundings
            return to_bf16_grid(self._converted(to_bf16_grid(x), q, scale))
        return self._converted(x, q, scale)

    def _converted(self, x, q, scale) -> torch.Tensor:
        if len(self.row_blocks()) > 1:
            return super().matmul(x)
        return converted_matmul(x, q, scale)

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
