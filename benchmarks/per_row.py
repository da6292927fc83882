"""Many adapters in one batch: base vs lorakit's adapter_per_row vs peft's `adapter_names=`.

    .venv/bin/python benchmarks/per_row.py [--counts 1,8,64] [--rows 64] [--tokens 1] [--context 64]
    python3 benchmarks/per_row.py --device cuda --model llama-1b      # on a GPU

One decode step (`tokens` new tokens per row, default 1) of `rows` sequences on a KV cache
of `context` tokens; every row names one of `count` distinct adapters (r=8 on q/k/v/o,
random B so every adapter changes the output). Strategies, on identical models, inputs and
adapters (the peft model gets lorakit's tensors, so both compute the same function, checked):
- base only: no adapter;
- lorakit: `with adapter_per_row(model, names)`, one forward;
- peft: `model(..., adapter_names=names)` — peft's mixed-batch forward, one forward;
- one adapter at a time: rows grouped by adapter, one forward per group (how a single-adapter
  stack serves them; lorakit's set_adapter, so only the strategy differs).
Base, lorakit and peft are timed round-robin (one step of each per round), so a drift of
the machine's speed does not favour any of them.
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import load, timed, timed_interleaved

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _cache(model, rows: int, context: int, device):
    ids = torch.randint(100, 1000, (rows, context), device=device)
    with torch.no_grad():
        return model(ids, use_cache=True).past_key_values


def _subset(cache, rows):
    out = copy.deepcopy(cache)
    for layer in out.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    return out


def _random_adapters(model, n: int, device) -> None:
    import lorakit

    g = torch.Generator().manual_seed(1)
    for i in range(n):
        lorakit.inject(model, lorakit.LoraConfig(r=8, target_modules=TARGETS), adapter=f"a{i}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=g).mul_(0.01).to(p.dtype))


def _peft_copy(base, lorakit_model, n: int):
    """peft model with the same adapters (tensors copied from lorakit's layers)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(base, cfg, adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", cfg)
    ours = dict(lorakit_model.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                stem, rest = name.removeprefix("base_model.model.").split(".lora_", 1)
                kind, adapter = rest.split(".")[:2]
                src = ours[f"{stem}.adapters.{adapter}.{kind}"]
                p.copy_(src.to(p.dtype))
    return model.eval()


def main() -> None:
    import lorakit

    p = argparse.ArgumentParser()
    p.add_argument("--counts", default="1,8,64")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--skip-one-at-a-time", action="store_true")
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    dev = args.device
    model = load(args.model, dev).eval()
    torch.manual_seed(0)
    cache = _cache(model, args.rows, args.context, dev)
    new = torch.randint(100, 1000, (args.rows, args.tokens), device=dev)

    def step(m, ids, kv, **kw):
        with torch.no_grad():
            out = m(input_ids=ids, past_key_values=kv, use_cache=True, **kw).logits
        kv.crop(-ids.shape[1])  # drop the appended tokens: every step sees the same cache
        return out

    plain = load(args.model, dev).eval()  # the base-only model, timed beside the others
    _random_adapters(model, max(counts), dev)
    peft_model = _peft_copy(load(args.model, dev).eval(), model, max(counts))
    tok = args.rows * args.tokens
    print(
        f"\n{args.model} on {dev}: {args.rows} rows x {args.tokens} new tokens, context {args.context}"
    )
    print("| adapters | strategy | step ms | tokens/s | vs base | lorakit vs this |")
    print("|---|---|---|---|---|---|")
    for count in counts:
        names = [f"a{i % count}" for i in range(args.rows)]

        def ours(names=names):
            with lorakit.adapter_per_row(model, names):
                return step(model, new, cache)

        def theirs(names=names):
            return step(peft_model, new, cache, adapter_names=names)

        diff = (ours().float() - theirs().float()).abs().max().item()
        scale = ours().float().abs().max().item()
        assert diff <= 2e-2 * scale, f"lorakit and peft disagree: {diff} (scale {scale})"
        # round-robin, so a drift of the machine's speed is shared by all three
        t = timed_interleaved(
            {"base": lambda: step(plain, new, cache), "ours": ours, "theirs": theirs},
            dev,
            args.repeat,
        )
        base = t["base"]
        rows = [("base only", base)]
        rows.append(("lorakit `adapter_per_row`", t["ours"]))
        rows.append(("peft `adapter_names=`", t["theirs"]))
        if not args.skip_one_at_a_time:
            groups = {n: [r for r, m in enumerate(names) if m == n] for n in dict.fromkeys(names)}
            subsets = {n: _subset(cache, idx) for n, idx in groups.items()}

            def one_at_a_time(groups=groups, subsets=subsets):
                for n, idx in groups.items():
                    lorakit.set_adapter(model, n)
                    step(model, new[idx], subsets[n])

            rows.append(
                ("one adapter at a time", timed(one_at_a_time, dev, max(1, args.repeat // 2)))
            )
        t_ours = rows[1][1]
        for name, t in rows:
            print(
                f"| {count} | {name} | {t * 1000:.1f} | {tok / t:,.0f} | {base / t:.2f}x | "
                f"{t / t_ours:.2f}x |"
            )


if __name__ == "__main__":
    main()
