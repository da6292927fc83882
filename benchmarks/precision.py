"""--precision on this machine (issue #15): the matmul engine's measured limit, what `auto`
picks, and SmolLM2-135M inference in fp32 vs bf16 with an unmerged adapter.

    .venv/bin/python benchmarks/precision.py [--force-bf16] [--repeat 5]

1. The machine: CPU model, the bf16 flags /proc/cpuinfo reports, torch, threads; fp32 and
   bf16 matmul GFLOP/s at 1024^3 and at a decode shape (64 x 576 x 1728).
2. `auto`: its choice, its reason and how long the probe took.
3. Inference latency, interleaved: a decode step (batch 1 and 8 on a 128-token KV cache) and
   a prefill (8 x 128), base fp32 vs an unmerged r=16 q/k/v/o adapter in fp32 and in bf16
   (base stored in bf16, adapter fp32: what `--precision bf16` loads).
4. Batch-1 generation, exactly 32 new tokens: transformers `generate` on the plain fp32
   model vs the same call on the unmerged-adapter model in fp32 and bf16 (what `lorakit
   generate` runs today; a compiled decode step is still to come).
The decode-step timings include a copy of the 128-token cache (so every call starts alike).
Where the bf16 matmul is not fast (auto picks fp32), the bf16 rows are measured on a single
decode step only — a full run would take hours on a scalar fallback — unless --force-bf16.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch
from common import timed, timed_interleaved

from lorakit.precision import auto_precision, cpu_bf16_flags

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gflops(m: int, k: int, n: int, dtype, budget_s: float = 3.0) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    t = time.perf_counter()
    a @ b
    first = time.perf_counter() - t
    reps = max(1, min(50, int(budget_s / max(first, 1e-6))))
    best = first
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def model_with_adapter(dtype):
    import lorakit
    from lorakit.models.load import load_model

    model, tok = load_model("smollm2-135m", "causal-lm", dtype=dtype)
    torch.manual_seed(0)
    lorakit.inject(model, lorakit.LoraConfig(r=16, alpha=32, target_modules=TARGETS))
    with torch.no_grad():  # a random B: the adapter changes the output
        for n, p in model.named_parameters():
            if n.endswith(".B"):
                p.normal_(0, 0.02)
    return model.eval(), tok


def shapes(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (8, 129), generator=g)
    with torch.no_grad():
        cache8 = model(ids[:, :128], use_cache=True).past_key_values
        cache1 = model(ids[:1, :128], use_cache=True).past_key_values
    return {
        "decode, batch 1": lambda: model(ids[:1, 128:], past_key_values=_copy(cache1)),
        "decode, batch 8": lambda: model(ids[:, 128:], past_key_values=_copy(cache8)),
        "prefill, 8 x 128": lambda: model(ids[:, :128]),
    }


def _copy(cache):
    import copy

    return copy.deepcopy(cache)


def generation(model, tok, tokens: int = 32) -> float:
    """Tokens/s of a batch-1 greedy generation of exactly `tokens` new tokens (EOS ignored)
    through transformers' generate, the path `lorakit generate` streams from."""
    ids = tok("Write one sentence about the sea.", return_tensors="pt")

    def run():
        with torch.no_grad():
            model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    return tokens / timed(run, repeat=3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--force-bf16", action="store_true", help="full bf16 rows even if slow")
    args = p.parse_args()
    torch.manual_seed(0)
    flags = subprocess.run(
        "grep -o 'amx[a-z0-9_]*\\|avx512_bf16' /proc/cpuinfo | sort -u",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    print(f"- CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"- bf16 flags (grep amx/avx512_bf16): {' '.join(flags) or '(none)'}")
    print(f"- lorakit.precision.cpu_bf16_flags(): {sorted(cpu_bf16_flags() or [])}")
    print(f"- date: {time.strftime('%Y-%m-%d')}\n")
    print("| matmul | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |\n|---|---|---|---|")
    for name, shape in (("1024^3", (1024, 1024, 1024)), ("64x576x1728", (64, 576, 1728))):
        f32, b16 = gflops(*shape, torch.float32), gflops(*shape, torch.bfloat16)
        print(f"| {name} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f}x |")
    t = time.perf_counter()
    choice, reason = auto_precision(torch.device("cpu"))
    print(f"\nauto: **{choice}** — {reason} (probe {time.perf_counter() - t:.2f} s)\n")
    fast = choice == "bf16" or args.force_bf16

    with torch.no_grad():
        from lorakit.models.load import load_model

        base, _ = load_model("smollm2-135m", "causal-lm")
        fp32, tok = model_with_adapter(torch.float32)
        bf16, _ = model_with_adapter(torch.bfloat16)
        fns = {}
        variants = [("base fp32", base), ("adapter fp32", fp32)]
        for label, model in variants + ([("adapter bf16", bf16)] if fast else []):
            for shape, fn in shapes(model).items():
                fns[(shape, label)] = fn
        ms = timed_interleaved(fns, repeat=args.repeat)
        if not fast:  # what the fallback costs, on 16 tokens instead of hours on 8 x 128
            ids = torch.randint(100, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
            small = {v: (lambda m=m: m(ids)) for v, m in (("fp32", fp32), ("bf16", bf16))}
            tiny = timed_interleaved(small, repeat=1)
            print(
                f"bf16 here: a 1 x 16-token forward with the adapter takes "
                f"{tiny['bf16'] * 1e3:.0f} ms vs {tiny['fp32'] * 1e3:.0f} ms in fp32 "
                f"({tiny['bf16'] / tiny['fp32']:.0f}x slower): the full bf16 rows are pending\n"
            )
    print("| shape | base fp32 ms | adapter fp32 ms | adapter bf16 ms | bf16 vs fp32 |")
    print("|---|---|---|---|---|")
    for shape in ("decode, batch 1", "decode, batch 8", "prefill, 8 x 128"):
        row = [ms.get((shape, v)) for v in ("base fp32", "adapter fp32", "adapter bf16")]
        cells = [f"{v * 1e3:.1f}" if v else "pending (bf16 slow here)" for v in row]
        ratio = f"{row[1] / row[2]:.2f}x" if row[1] and row[2] else "-"
        print(f"| {shape} | {' | '.join(cells)} | {ratio} |")

    print("\n| batch-1 generation, 32 tokens | tokens/s | vs transformers fp32 |\n|---|---|---|")
    ref = generation(base, tok)
    rows = [("transformers generate, fp32, no adapter", ref)]
    rows.append(("lorakit, fp32, unmerged adapter", generation(fp32, tok)))
    if fast:
        rows.append(("lorakit, bf16, unmerged adapter", generation(bf16, tok)))
    else:
        rows.append(("lorakit, bf16, unmerged adapter", None))
    for label, tps in rows:
        cell = f"{tps:.1f} | {tps / ref:.2f}x" if tps else "pending (bf16 slow here) | -"
        print(f"| {label} | {cell} |")


if __name__ == "__main__":
    main()
