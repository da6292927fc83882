"""What the side-by-side benchmarks share: the models, timing, memory."""

from __future__ import annotations

import os
import time

import torch


def load(model: str, device: str):
    """SmolLM2 / MiniLM by lorakit's names (fp32), or `llama-1b`: Llama-3.2-1B's shape with
    random weights in bf16 (no download; for GPU runs)."""
    if model == "llama-1b":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            rope_theta=500000.0,
        )
        torch.manual_seed(0)
        with torch.device(device):
            m = LlamaForCausalLM(config).to(torch.bfloat16)
        return m
    from lorakit.models.load import load_model

    m, _ = load_model(model, "causal-lm")
    return m.to(device)


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device="cpu", repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def timed_interleaved(fns: dict, device="cpu", repeat: int = 5, warmup: int = 1) -> dict:
    """Median seconds of each of `fns` over `repeat` rounds, one call of each per round.

    Round-robin instead of one variant after the other: on a shared or throttled machine
    the speed drifts over minutes, and interleaving spreads that drift over every variant
    instead of charging it to whichever ran last.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
