"""Which kernel runs an int8 Linear of a model quantized for inference (`quantize(...,
inference=True)`: generate, chat, classify, serve) on the CPU, chosen by measurement.

Two ways to compute x @ (q * scale).T:
  converted  q converted to x's dtype, then one sgemm: reads the int8 codes, writes and
             reads a full-precision copy per call. Wins at many rows (prefill, eval),
             where the copy is spread over a large matmul.
  packed     torch's int8 weight kernel (`torch._weight_int8pack_mm`): reads the codes
             once, 4x fewer bytes than an fp32 weight. A decode step's handful of rows is
             memory-bound, so this is what makes `--quantize int8` decode faster than fp32
             (measured on a 2-core EPYC without any bf16 instruction: 2-3x an fp32 GEMV).
             Its inputs and output are bf16 (accumulated in fp32): bf16-level rounding on
             top of the int8 codes' own error.

`packed_rows_limit()` times both on a decoder-sized matrix once per process and returns
the largest row count at which packed is faster (0: never, e.g. where the kernel is a slow
fallback or missing), so nothing is assumed about the CPU.

The kernel crashes the process (a segfault, not an exception) on some inner dimensions, so
`usable` refuses them before any call. Found by calling it on a grid of shapes, each in a
child process (torch 2.13, 2026-12): on a 2-core EPYC without bf16 it crashed unless
in % 8 == 0; on an AMX Xeon (amx_bf16 amx_int8 amx_tile avx512_bf16) it also crashes on
any bf16 input of 2 or more rows unless in % 16 == 0 (1 row, and fp32 inputs, ran). So
only in % 16 == 0 goes through it, whatever the row count: a decoder's hidden and MLP
sizes are multiples of 16, and anything else takes the converted path.
"""

from __future__ import annotations

import functools
import os
import time

import torch

KERNEL = getattr(torch, "_weight_int8pack_mm", None)
# row counts the probe tries, in order; the limit is one of them. Every power of two: a
# serving batch of 8 between two coarse points would otherwise fall to the converted path,
# which at a few rows is slower than an fp32 weight
PROBE_ROWS = (1, 2, 4, 8, 16, 32, 64)
IN_MULTIPLE = 16  # inner dimensions the kernel runs on every CPU tried (docstring)
ENV = "LORAKIT_INT8_KERNEL"  # "packed" or "converted" forces one (tests, diagnosis)


def usable(x: torch.Tensor, q: torch.Tensor) -> bool:
    return (
        KERNEL is not None
        and x.device.type == "cpu"
        and q.device.type == "cpu"
        and q.dtype == torch.int8
        and q.dim() == 2
        and q.shape[1] % IN_MULTIPLE == 0
        and x.is_floating_point()
    )


def packed_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (q * scale[:, None]).T through the int8 kernel; any leading dims; x's dtype out."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
    y = KERNEL(rows, q.contiguous(), scale.to(torch.bfloat16))
    return y.to(x.dtype).view(*x.shape[:-1], q.shape[0])


def converted_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    y = torch.nn.functional.linear(x, q.to(x.dtype))  # fresh, outside autograd: scaled in place
    return y.mul_(scale.to(y.dtype))


def _median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up: first-call allocation and dispatch
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def decide(timings: list[tuple[int, float, float]]) -> int:
    """The rows limit from (rows, packed s, converted s) in increasing rows: the last row
    count up to which packed was faster at every size tried (0 if it lost at the first)."""
    limit = 0
    for rows, packed, converted in timings:
        if packed >= converted:
            break
        limit = rows
    return limit


@functools.cache
def packed_rows_limit() -> int:
    forced = os.environ.get(ENV, "")
    if forced in ("packed", "converted"):
        return 1 << 30 if forced == "packed" else 0
    if KERNEL is None:
        return 0
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (1536, 576), dtype=torch.int8, generator=gen)
    scale = torch.rand(1536, generator=gen) / 127
    with torch.no_grad():
        x = torch.randn(1, 576, generator=gen)
        try:  # a kernel that errors or is wrong here is never used
            ok = torch.allclose(
                packed_matmul(x, q, scale), converted_matmul(x, q, scale), rtol=0.05, atol=0.05
            )
        except RuntimeError:
            ok = False
        if not ok:
            return 0
        timings = []
        for rows in PROBE_ROWS:
            x = torch.randn(rows, 576, generator=gen)
            packed = _median_seconds(lambda x=x: packed_matmul(x, q, scale))
            converted = _median_seconds(lambda x=x: converted_matmul(x, q, scale))
            timings.append((rows, packed, converted))
            if packed >= converted:
                break
    return decide(timings)


def packed_fits(x: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether x's rows go through the packed kernel: it can run them and measured faster."""
    rows = x.numel() // max(x.shape[-1], 1)
    return rows > 0 and usable(x, q) and rows <= packed_rows_limit()


def to_bf16_grid(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bf16 values, kept in its dtype: the packed kernel's input and output
    rounding, applied on the converted path so a row's result does not depend on which
    kernel its batch's size picked (a served request alone or in a mixed batch)."""
    return t.to(torch.bfloat16).to(t.dtype)
