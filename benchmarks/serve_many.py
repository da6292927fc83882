"""Thousands of adapters from one base: `lorakit serve --adapter-dir` with a bounded bank.

    .venv/bin/python benchmarks/serve_many.py [--adapters 1000] [--requests 256]
        [--concurrency 64] [--max-tokens 32] [--max-loras 32] [--zipf 1.0]
        [--runs base,base-no-prefix,bounded,fit]

SmolLM2-135M, fp32. `--adapters` r=8 adapters on q/v with random B (each changes the output)
are written to a temporary directory; the server starts with `--adapter-dir` on it and
nothing else, so each adapter is read the first time a request names it. Request i names
an adapter drawn from a Zipf-like distribution (p(k) ~ 1/k^s, seeded), chat prompts as in
serve_load.py, greedy, `concurrency` client threads over real HTTP. Up to four runs
(`--runs`; base only always runs), each on a fresh server (so each peak RSS is its own):
- base only: every request names the base model;
- base, no prefix reuse (`--prefix-cache-mb 0`): what the base gains from sharing its
  prompts' keys and values across all requests, which an adapter's rows cannot (an adapter
  changes K and V, so its rows reuse only their own adapter's prefixes);
- on disk, bank of `--max-loras`: the adapters named load on first use, LRU eviction;
- all fit: `--max-loras` and `--max-cpu-loras` as large as the adapter count, every adapter
  the run names loaded (one request each) before the clock starts.
Replies of the two adapter runs are compared: a bounded bank must not change any output.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import peak_rss_mb, run_load  # noqa: E402

import lorakit  # noqa: E402
from lorakit.models.load import load_model  # noqa: E402


def write_adapters(out: Path, n: int) -> None:
    """n adapters that share A's and differ in B (seeded per adapter), written with lorakit's
    own writer once and then as tensors: 1,000 saves through a model would take minutes."""
    from safetensors.torch import load_file, save_file

    model, _ = load_model("smollm2-135m", "causal-lm")
    lorakit.inject(model, lorakit.LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    first = lorakit.save_adapter(model, out / "a0")
    tensors = load_file(first / "adapter_model.safetensors")
    config = (first / "adapter_config.json").read_text()
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        own = {
            k: (torch.randn(t.shape, generator=gen) * 0.01 if "lora_B" in k else t)
            for k, t in tensors.items()
        }
        d = out / f"a{i}"
        d.mkdir(exist_ok=True)
        save_file(own, d / "adapter_model.safetensors")
        (d / "adapter_config.json").write_text(config)


def zipf_names(n_adapters: int, n_requests: int, s: float, seed: int = 0) -> list[str]:
    weights = [1 / (k + 1) ** s for k in range(n_adapters)]
    rng = random.Random(seed)
    order = list(range(n_adapters))
    rng.shuffle(order)  # which adapter is popular: not simply a0
    return [f"a{order[k]}" for k in rng.choices(range(n_adapters), weights, k=n_requests)]


def start(directory: Path, batch: int, extra: list[str]):
    from serve_load import start_server

    return start_server([], batch, ["--adapter-dir", str(directory), *extra])


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def run(label, directory, names, args, extra, warm: list[str] = ()) -> dict:
    proc, url = start(directory, args.concurrency, extra)
    try:
        run_load(url, ["smollm2-135m"] * 8, 4, 8)  # warm-up
        if warm:
            run_load(url, list(warm), 1, args.concurrency)
        res = run_load(url, names, args.max_tokens, args.concurrency)
        res["peak_mb"] = peak_rss_mb(proc.pid)
        for key, m in [("evictions", "lorakit_adapter_evictions_total"),
                       ("misses", "lorakit_adapter_cache_misses_total"),
                       ("hits", "lorakit_adapter_cache_hits_total")]:  # fmt: skip
            res[key] = metric(url, m)
        reads = [metric(url, f'lorakit_adapter_load_seconds_{x}{{stage="read"}}')
                 for x in ("sum", "count")]  # fmt: skip
        attach = [metric(url, f'lorakit_adapter_load_seconds_{x}{{stage="attach"}}')
                  for x in ("sum", "count")]  # fmt: skip
        res["read_ms"] = 1000 * reads[0] / max(reads[1], 1)
        res["attach_ms"] = 1000 * attach[0] / max(attach[1], 1)
        print(label, {k: v for k, v in res.items() if k != "texts"}, flush=True)
        return res
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--adapters", type=int, default=1000)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-loras", type=int, default=32)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--runs", default="base,base-no-prefix,bounded,fit")
    args = p.parse_args()
    todo = args.runs.split(",")
    if unknown := set(todo) - {"base", "base-no-prefix", "bounded", "fit"}:
        sys.exit(f"unknown --runs {sorted(unknown)}: base, base-no-prefix, bounded, fit")
    names = zipf_names(args.adapters, args.requests, args.zipf)
    distinct = sorted(set(names))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        start_s = time.perf_counter()
        write_adapters(directory, args.adapters)
        print(f"{args.adapters} adapters written in {time.perf_counter() - start_s:.0f} s; "
              f"{len(distinct)} distinct named by {args.requests} requests", flush=True)  # fmt: skip
        base_names = ["smollm2-135m"] * args.requests
        base = run("base only", directory, base_names, args, [])
        rows.append(("base only", base))
        if "base-no-prefix" in todo:
            plain = run("base, no prefix reuse", directory, base_names, args,
                        ["--prefix-cache-mb", "0"])  # fmt: skip
            rows.append(("base only, `--prefix-cache-mb 0`", plain))
        bounded = fit = None
        if "bounded" in todo:
            bounded = run(f"{args.adapters} on disk, --max-loras {args.max_loras}", directory,
                          names, args, ["--max-loras", str(args.max_loras)])  # fmt: skip
            rows.append((f"{args.adapters} on disk, bank of {args.max_loras}", bounded))
        if "fit" in todo:
            big = str(max(args.adapters, args.max_loras))
            fit = run("all fit", directory, names, args,
                      ["--max-loras", big, "--max-cpu-loras", big], warm=distinct)  # fmt: skip
            rows.append((f"all fit (--max-loras {big}, warm)", fit))
    print(f"\nrequests={args.requests} concurrency={args.concurrency} "
          f"max_tokens={args.max_tokens} zipf={args.zipf} threads={torch.get_num_threads()}")  # fmt: skip
    print("| run | tokens | s | tokens/s | vs base | p50 s | p95 s | misses | evictions | "
          "read ms | attach ms | peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['p50']:.1f} | {r['p95']:.1f} | "
              f"{r['misses']:.0f} | {r['evictions']:.0f} | {r['read_ms']:.1f} | "
              f"{r['attach_ms']:.1f} | {r['peak_mb']:.0f} |")  # fmt: skip
    # run_load raises on any non-200 answer: reaching here means every request was answered
    if bounded and fit:
        same = sum(a == b for a, b in zip(bounded["texts"], fit["texts"], strict=True))
        print(f"\nreplies equal between the bounded bank and all-fit runs: {same}/{len(names)} "
              f"({len(set(fit['texts']))} distinct replies); every request answered")  # fmt: skip


if __name__ == "__main__":
    main()
