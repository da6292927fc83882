"""Inference cost of one adapter: base vs unmerged vs merged, lorakit and peft side by side.

    .venv/bin/python benchmarks/inference.py                       # CPU: SmolLM2-135M, fp32
    python3 benchmarks/inference.py --device cuda --model llama-1b  # GPU: random Llama 1B, bf16

Two shapes: a decode step (batch 1 and batch 8, one new token on a 128-token KV cache: the
latency per generated token) and a prefill batch (8 x 128 tokens: the latency per batch).
One r=16 adapter on q/k/v/o (random B, so it changes the output). The same adapter tensors
go into lorakit and into peft; merged = `merge` (lorakit) / `merge_adapter` (peft).
"""

from __future__ import annotations

import argparse

import torch
from common import load, timed_interleaved

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _shapes(model, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (8, 129), generator=g).to(device)
    with torch.no_grad():
        cache8 = model(ids[:, :128], use_cache=True).past_key_values
        cache1 = model(ids[:1, :128], use_cache=True).past_key_values
    return {
        "decode, batch 1": (ids[:1, 128:], cache1),
        "decode, batch 8": (ids[:, 128:], cache8),
        "prefill, 8 x 128": (ids[:, :128], None),
    }


def _step(model, ids, cache):
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
    if cache is not None:
        cache.crop(-ids.shape[1])


def _random_B(model) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith(".B"):
                prm.copy_(torch.randn(prm.shape, generator=g).mul_(0.01).to(prm.dtype))


def _peft_copy(model_name, dev, ours):
    """A peft model holding exactly `ours`' adapter tensors."""
    from peft import LoraConfig, get_peft_model

    theirs = get_peft_model(
        load(model_name, dev).eval(),
        LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0),
    ).eval()
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        for name, prm in theirs.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                stem, rest = name.removeprefix("base_model.model.").split(".lora_", 1)
                prm.copy_(mine[f"{stem}.adapters.default.{rest.split('.')[0]}"].to(prm.dtype))
    return theirs


def main() -> None:
    import lorakit

    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    dev = args.device
    # Five models side by side (same base weights, same adapter tensors), timed round-robin.
    base = load(args.model, dev).eval()
    shapes = _shapes(base, dev)
    models = {"base": base}
    for state in ("unmerged", "merged"):
        ours = load(args.model, dev).eval()
        lorakit.inject(ours, lorakit.LoraConfig(r=16, alpha=32, target_modules=TARGETS))
        _random_B(ours)
        theirs = _peft_copy(args.model, dev, ours)
        if state == "merged":
            lorakit.merge(ours)
            theirs.merge_adapter()
        models[f"lorakit {state}"], models[f"peft {state}"] = ours, theirs
    results = {}
    for shape, (ids, cache) in shapes.items():
        fns = {label: (lambda m=m, i=ids, c=cache: _step(m, i, c)) for label, m in models.items()}
        for label, t in timed_interleaved(fns, dev, args.repeat).items():
            results[(label, shape)] = t
    print(f"\n{args.model} on {dev}, r=16 q/k/v/o; median of {args.repeat} rounds, interleaved")
    print("| shape | variant | ms | vs base | lorakit vs peft |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        base = results[("base", shape)]
        for label in ("base", "lorakit unmerged", "peft unmerged", "lorakit merged", "peft merged"):
            t = results[(label, shape)]
            versus = ""
            if label.startswith("lorakit"):
                versus = f"{results[(label.replace('lorakit', 'peft'), shape)] / t:.2f}x"
            print(f"| {shape} | {label} | {t * 1000:.2f} | {t / base:.3f}x | {versus} |")


if __name__ == "__main__":
    main()
