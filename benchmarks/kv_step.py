"""A serve decode step over the running batch's KV: transformers' concatenating
DynamicCache vs lorakit's preallocated slot cache (`lorakit.serve.slots`), in one process.

    .venv/bin/python benchmarks/kv_step.py [--rows 64] [--cached 100] [--steps 10] [--rounds 2]
        [--repeat-kv]

SmolLM2-135M fp32, base only: one prefill of `rows` x `cached` tokens, then `steps` decode
steps each way, from the same prefilled keys and values; the median step in ms per round.
`--repeat-kv` forces transformers' pre-5.25 attention path for a single query token (keys
and values repeated per query head, instead of packing the query heads per KV head).
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers.integrations.sdpa_attention as sdpa

from lorakit.infer.generate import cache_kwarg, returned_cache
from lorakit.models.load import load_model
from lorakit.serve import kv
from lorakit.serve.slots import SlotCache


def _fresh(batch: kv.BatchCache) -> kv.BatchCache:
    return kv.BatchCache([(k.clone(), v.clone()) for k, v in batch.layers], batch.mask.clone())


def _step(model, ids, mask, cache, position: int):
    rows = ids.shape[0]
    start = time.perf_counter()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True,
                    position_ids=torch.full((rows, 1), position),
                    **{cache_kwarg(model): cache})  # fmt: skip
    return returned_cache(out), time.perf_counter() - start


def concatenating(model, ids, prefilled: kv.BatchCache, steps: int) -> float:
    batch = _fresh(prefilled)
    cache, mask, times = kv.to_hf(batch), batch.mask, []
    for s in range(steps):
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], 1)
        cache, seconds = _step(model, ids, mask, cache, prefilled.mask.shape[1] + s)
        times.append(seconds)
    return sorted(times)[steps // 2] * 1000


def slotted(model, ids, prefilled: kv.BatchCache, steps: int) -> float:
    slots = SlotCache(prefilled.rows, 4096)
    slots.add(_fresh(prefilled))
    times = []
    for s in range(steps):
        slots.reserve_step(1)
        _, seconds = _step(model, ids, slots.step_mask(1), slots.hf_cache(),
                           prefilled.mask.shape[1] + s)  # fmt: skip
        slots.commit(1)
        times.append(seconds)
    return sorted(times)[steps // 2] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cached", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeat-kv", action="store_true")
    args = p.parse_args()
    if args.repeat_kv:  # the branch transformers takes when it cannot pack: repeat_kv
        sdpa.is_torchdynamo_compiling = lambda: True
    torch.manual_seed(0)
    model, _ = load_model("smollm2-135m", "causal-lm")
    model.eval().requires_grad_(False)
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.cached))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    prefilled = kv.from_hf(returned_cache(out), mask)
    step_ids = ids[:, :1]
    print(f"{args.rows} rows x {args.cached} cached tokens, median of {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', repeat_kv forced' if args.repeat_kv else ''}")  # fmt: skip
    for r in range(args.rounds):
        a = concatenating(model, step_ids, prefilled, args.steps)
        b = slotted(model, step_ids, prefilled, args.steps)
        print(f"round {r}: concatenating {a:.0f} ms/step, slot cache {b:.0f} ms/step", flush=True)


if __name__ == "__main__":
    main()
