"""Where a batch-1 decode step of SmolLM2-135M goes: ms per step of a bare loop of forwards
over a transformers DynamicCache, fp32 or `--quantize` (inference kernels), with an r=8
all-linear adapter, and optionally torch.profiler's top operators.

    .venv/bin/python benchmarks/decode_profile.py [--quantize none|int8|nf4] [--profile]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

import lorakit
from lorakit.infer.load import load_for_inference
from lorakit.models.quantize import quantize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quantize", default="none", choices=["none", "int8", "nf4"])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    model, tokenizer, _, _ = load_for_inference("smollm2-135m")
    torch.manual_seed(0)
    lorakit.inject(model, lorakit.LoraConfig(r=8, alpha=16, task_type="CAUSAL_LM"))
    if args.quantize != "none":  # as load_for_inference(..., quantize=...) does
        quantize(model.requires_grad_(False), args.quantize, inference=True)
    model.eval()
    ids = tokenizer("Write one sentence about the sea.", return_tensors="pt")

    def per_step(n: int) -> float:
        with torch.no_grad():
            cache = DynamicCache()
            out = model(**ids, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(n):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            return (time.perf_counter() - start) / n

    per_step(4)  # warm-up (and the int8 kernel's probe)
    best = min(per_step(args.steps) for _ in range(3))
    print(f"{args.quantize}: {best * 1e3:.1f} ms per decode step (best of 3 x {args.steps})")
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            per_step(8)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
