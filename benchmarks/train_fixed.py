"""Training speed and memory on fixed-length batches: lorakit vs peft, same model, data, config.

    .venv/bin/python benchmarks/train_fixed.py                       # CPU: SmolLM2-135M, fp32
    python3 benchmarks/train_fixed.py --device cuda --model llama-1b  # GPU: random Llama 1B, bf16

LoRA r=16, alpha=32, dropout 0 on q/k/v/o; batch 4 x 256 tokens (random token ids: the
speed of a dense step does not depend on the text); AdamW lr 1e-4; every position labelled.
Each variant runs in its own process (so peak RSS is its own), one after the other:
- peft: `get_peft_model` + the model's own loss (`model(input_ids, labels=...)`), as with
  the transformers Trainer;
- lorakit: `lorakit.inject` + lorakit's causal-LM loss (chunked linear cross-entropy);
- `+compile` variants wrap the model in torch.compile (GPU runs; off on CPU by default).
On CUDA both run under bf16 autocast on a bf16 base with fp32 adapters (peft's default
autocast_adapter_dtype) and memory is torch.cuda.max_memory_allocated; on CPU fp32 and
peak RSS. Achieved GFLOP/s counts the matmul FLOPs of the step (forward, backward to the
inputs of frozen layers, LoRA's small matmuls, attention) over the measured matmul peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import load, rss_mb, sync

from lorakit.eval.measure import peak_memory_mb

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
R, ALPHA = 16, 32


def matmul_flops(model, batch: int, seq: int) -> float:
    """Matmul FLOPs of one LoRA training step (frozen base: no weight gradients).

    Counted on the model before any adapter is added (a tied LM head is one nn.Linear).
    """
    c = model.config
    tokens = batch * seq
    linear = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )
    heads, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    attn = 2 * 2 * batch * heads * seq * seq * d * c.num_hidden_layers  # QK^T and PV
    lora = 0
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in TARGETS:
            lora += R * (m.in_features + m.out_features)
    forward = 2 * tokens * linear + attn + 2 * tokens * lora
    backward = 2 * tokens * linear + 2 * attn + 2 * 2 * tokens * lora  # input grads; LoRA: both
    return forward + backward


def matmul_peak(device: str) -> float:
    """GFLOP/s of a large matmul in the dtype the benchmark trains in."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device == "cuda" else 5
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):  # the best of three: the peak, not a moment of contention
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def run_variant(args) -> dict:
    base_rss = rss_mb()
    device = args.device
    model = load(args.model, device)
    model.config.use_cache = False  # training: no KV cache for either tool
    flops = matmul_flops(model, args.batch, args.seq)
    tool, compiled = args.only.split("+")[0], args.only.endswith("+compile")
    if tool == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS)
        )

        def loss_of(m, ids):
            return m(input_ids=ids, labels=ids).loss
    else:
        import lorakit
        from lorakit.eval.loss import causal_lm_loss

        lorakit.inject(model, lorakit.LoraConfig(r=R, alpha=ALPHA, target_modules=TARGETS))

        def loss_of(m, ids):
            return causal_lm_loss(m, {"input_ids": ids, "labels": ids})

    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    stepper = model
    if compiled:
        stepper = torch.compile(model)
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    batches = [
        torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
        for _ in range(args.warmup + args.steps)
    ]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    model.train()
    losses, times = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, ids in enumerate(batches):
        sync(device)
        t = time.perf_counter()
        with autocast:
            loss = loss_of(stepper, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
        losses.append(loss.item())
    step = sorted(times)[len(times) // 2]
    return {
        "variant": args.only,
        "s_per_step": step,
        "tokens_per_s": args.batch * args.seq / step,
        "gflops": flops / step / 1e9,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_mb": (
            torch.cuda.max_memory_allocated() / 2**20
            if device == "cuda"
            else peak_memory_mb()  # VmHWM: this process's own peak
        ),
        "baseline_mb": 0.0 if device == "cuda" else base_rss,
        "trainable": sum(p.numel() for p in trainable),
        "step_times": times,
    }


def _combine(found: list[dict]) -> dict:
    """One row from a variant's runs: the median step over all of them, the largest peak."""
    times = sorted(t for r in found for t in r["step_times"])
    step = times[len(times) // 2]
    row = {**found[0], "s_per_step": step, "step_times": times}
    row["tokens_per_s"] = found[0]["tokens_per_s"] * found[0]["s_per_step"] / step
    row["gflops"] = found[0]["gflops"] * found[0]["s_per_step"] / step
    row["peak_mb"] = max(r["peak_mb"] for r in found)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, llama-1b, a directory")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=2, help="run the variants alternately this many times"
    )
    p.add_argument("--variants", default=None, help="comma list: peft,lorakit,peft+compile,...")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_variant(args)), flush=True)
        return
    variants = (args.variants or "peft,lorakit").split(",")
    peak = matmul_peak(args.device)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.rounds):  # peft, lorakit, peft, lorakit, ...: drift hits both alike
        for v in variants:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--only", v]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not lines:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                sys.exit(f"variant {v} failed")
            runs[v].append(json.loads(lines[-1][7:]))
    rows = [_combine(found) for found in runs.values()]
    ref = next((r for r in rows if r["variant"] == "peft"), rows[0])
    where = f"{args.device}, {args.model}, batch {args.batch} x {args.seq}, r={R} q/k/v/o"
    if args.checkpointing:
        where += ", activation checkpointing"
    print(
        f"\n{where}; matmul peak {peak:,.0f} GFLOP/s; median of {args.steps} steps x "
        f"{args.rounds} alternating runs per variant\n"
    )
    mem = "CUDA max allocated MB" if args.device == "cuda" else "peak RSS MB (minus start)"
    print(
        f"| variant | s/step | tokens/s | vs peft | GFLOP/s (% of peak) | {mem} | memory vs peft | first loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem_cell = (
            f"{r['peak_mb']:,.0f}"
            if args.device == "cuda"
            else f"{r['peak_mb']:,.0f} ({r['peak_mb'] - r['baseline_mb']:,.0f})"
        )
        print(
            f"| {r['variant']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x | {r['gflops']:,.0f} "
            f"({100 * r['gflops'] / peak:.0f}%) | {mem_cell} | "
            f"{r['peak_mb'] / ref['peak_mb']:.2f}x | {r['first_loss']:.4f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": where, "matmul_peak_gflops": peak, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
