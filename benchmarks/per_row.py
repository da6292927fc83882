"""Cost of many adapters in one batch: base vs adapter_per_row vs one adapter at a time (peft's way).

    .venv/bin/python benchmarks/per_row.py [--adapters 64] [--rows 64] [--tokens 1] [--context 64]

SmolLM2-135M, fp32 CPU. Each "step" is one forward of `rows` sequences of `tokens` new
tokens on a KV cache of `context` tokens (tokens=1 is a decode step, as in serving).
- base: no adapter;
- per-row: every row has its own adapter (`adapters` distinct, r=8 on q/k/v/o), one forward;
- peft's way: rows grouped by adapter, one forward per group with that adapter active.
The peft-way figure uses lorakit's own set_adapter (same kernels), so the ratio measures the
batching strategy, not the library.
"""

from __future__ import annotations

import argparse
import time

import torch


def _cache(model, rows: int, context: int):
    ids = torch.randint(100, 1000, (rows, context))
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


def _timed(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    import lorakit
    from lorakit.models.load import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--adapters", type=int, default=64)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--context", type=int, default=64)
    args = p.parse_args()
    model, _ = load_model("smollm2-135m", "causal-lm")
    model.eval()
    torch.manual_seed(0)
    cache = _cache(model, args.rows, args.context)
    new = torch.randint(100, 1000, (args.rows, args.tokens))

    def step(m, ids, kv):
        with torch.no_grad():
            m(ids, past_key_values=kv, use_cache=True)
        kv.crop(-ids.shape[1])  # drop the appended tokens: every step sees the same cache

    base = _timed(lambda: step(model, new, cache))
    for i in range(args.adapters):
        cfg = lorakit.LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        lorakit.inject(model, cfg, adapter=f"a{i}")
    names = [f"a{i % args.adapters}" for i in range(args.rows)]

    def per_row():
        with lorakit.adapter_per_row(model, names):
            step(model, new, cache)

    def one_at_a_time():
        for i in range(args.adapters):
            rows = [r for r, n in enumerate(names) if n == f"a{i}"]
            lorakit.set_adapter(model, f"a{i}")
            step(model, new[rows], subsets[i])

    # each adapter's rows get their own cache, made once (as a server would keep them)
    subsets = []
    for i in range(args.adapters):
        rows = [r for r, n in enumerate(names) if n == f"a{i}"]
        subsets.append(_rebuild(cache, [(k[rows], v[rows]) for k, v in _layers(cache)]))
    t_row = _timed(per_row)
    t_one = _timed(one_at_a_time, repeat=3)
    tok = args.rows * args.tokens
    print(
        f"rows={args.rows} new tokens/row={args.tokens} context={args.context} adapters={args.adapters}"
    )
    print("| strategy | step ms | tokens/s | vs base |")
    print("|---|---|---|---|")
    for name, t in [
        ("base only", base),
        ("adapter_per_row", t_row),
        ("one adapter at a time", t_one),
    ]:
        print(f"| {name} | {t * 1000:.1f} | {tok / t:.0f} | {base / t:.2f}x |")


def _layers(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def _rebuild(cache, sub):
    import copy

    out = copy.deepcopy(cache)
    for layer, (k, v) in zip(out.layers, sub, strict=True):
        layer.keys, layer.values = k, v
    return out


if __name__ == "__main__":
    main()
