"""The LM head on the last position of a prefill: a sliced input vs a row-major copy.

    .venv/bin/python benchmarks/head_slice.py [--rows 1,8,32,64] [--tokens 60] [--repeat 3]

transformers runs the head on `hidden[:, -1:, :]` when only the last position's logits are
wanted (`logits_to_keep=1`: generation's and lorakit serve's prefill). For a frozen weight
(LoRA's base, any inference model) torch's `F.linear` cannot fold that strided 3-D input
into one matrix multiply and runs a bmm against the weight expanded to [rows, in, vocab];
at one row the slice even passes `is_contiguous()`, and bf16 still copies the weight. This
times `F.linear` at SmolLM2-135M's head shape (49,152 x 576) both ways, in fp32 and bf16,
and reports the largest single allocation each makes (torch.profiler's memory record)
(`lorakit.models.head_input` is the fix: the slice is copied first).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def _largest_allocation(x, w) -> float:
    """MB of the largest single allocation one F.linear makes. The profiler sees it where a
    Python dispatch mode does not: the weight's copy happens inside bmm's own kernel."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        F.linear(x, w)
    return max((e.self_cpu_memory_usage for e in prof.events()), default=0) / 2**20


def _time(x, w, repeat: int) -> float:
    F.linear(x, w)  # warm up (oneDNN's first call builds its kernels)
    start = time.perf_counter()
    for _ in range(repeat):
        F.linear(x, w)
    return (time.perf_counter() - start) / repeat * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,8,32,64")
    p.add_argument("--tokens", type=int, default=60, help="prompt length before the slice")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| dtype | rows | sliced ms | row-major ms | sliced / row-major | largest allocation, sliced | row-major |"
    )
    print("|---|---|---|---|---|---|---|")
    weight = torch.randn(args.vocab, args.hidden)  # frozen: requires_grad False
    for dtype in (torch.float32, torch.bfloat16):
        w = weight.to(dtype)
        for rows in (int(r) for r in args.rows.split(",")):
            sliced = torch.randn(rows, args.tokens, args.hidden, dtype=dtype)[:, -1:, :]
            flat = sliced.clone(memory_format=torch.contiguous_format)  # row-major strides
            sizes = [_largest_allocation(x, w) for x in (sliced, flat)]
            a, b = _time(sliced, w, args.repeat), _time(flat, w, args.repeat)
            print(f"| {str(dtype).removeprefix('torch.')} | {rows} | {a:.1f} | {b:.1f} | "
                  f"{a / b:.1f}x | {sizes[0]:.1f} MB | {sizes[1]:.1f} MB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
