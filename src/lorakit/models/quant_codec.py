"""int8 and NF4 codes for a weight matrix, and back: the math of lorakit's quantized base.

  int8  symmetric, one scale per output channel (per row):  W ≈ q * scale[:, None]
  nf4   4-bit NormalFloat (Dettmers et al. 2023): 16 quantiles of N(0, 1) in [-1, 1],
        one absmax per block of 64 weights, two 4-bit codes per byte.

Large matrices are encoded CHUNK weights at a time, so temporaries stay at tens of MB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
CHUNK = 1 << 22  # weights quantized per step: temporaries stay at tens of MB for any matrix


# -- the math ------------------------------------------------------------------------------
def quantize_int8(
    W: torch.Tensor, scale_grid: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 [rows, cols], scale [rows] in W's dtype), W ≈ q * scale.
    `scale_grid`: every scale is also a value of that dtype (bf16 for the int8 kernel, which
    takes bf16 scales: then it and the fp32 path multiply by the same number)."""
    W = W.detach()
    q = torch.empty(W.shape, dtype=torch.int8, device=W.device)
    scale = torch.empty(W.shape[0], dtype=W.dtype, device=W.device)
    rows = max(1, CHUNK // max(W.shape[1], 1))
    for s in range(0, W.shape[0], rows):
        w = W[s : s + rows].float()
        # the stored (possibly bf16) scale is the one the codes are rounded against
        step = w.abs().amax(dim=1) / 127
        step = step.to(scale_grid) if scale_grid is not None else step
        scale[s : s + rows] = step = step.to(W.dtype)
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
    step = max(1, CHUNK // block)  # blocks per step
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
