"""Load test of `lorakit serve`: many adapters mixed in one batch vs base only vs peft's way.

    .venv/bin/python benchmarks/serve_load.py [--requests 128] [--concurrency 64] [--max-tokens 32]

SmolLM2-135M, fp32, r=8 adapters on q/k/v/o with random B (so each adapter changes the
output). The same requests (prompt i, adapter i mod k) are sent to a real `lorakit serve`
process on 127.0.0.1 by `concurrency` client threads:
- base only: every request names the base model;
- 8 / 64 adapters: request i names adapter i mod 8 / 64, all in flight together;
- peft's way: one adapter active at a time, requests grouped per adapter and each group run
  as one batch with peft's `generate` (what serving with peft looks like without per-row
  adapters), in this process, one group after another.
Throughput counts completion tokens; latency is per request from the start of the run.
Peak memory is the server process's peak RSS (VmHWM), or this process's for peft's way.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [
    "Write a short note to a customer whose parcel is late.",
    "Explain what a rainbow is to a child.",
    "Give three tips for a job interview.",
    "Describe the sea in two sentences.",
    "How do I reset my password?",
    "Summarise the plot of Cinderella.",
    "What should I pack for a weekend hike?",
    "Thank a colleague for their help.",
]


def make_adapters(out: Path, n: int) -> list[Path]:
    import lorakit
    from lorakit.models.load import load_model

    model, _ = load_model("smollm2-135m", "causal-lm")
    paths = []
    for i in range(n):
        cfg = lorakit.LoraConfig(
            r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        torch.manual_seed(1000 + i)  # A's init: the same adapters in every run (outputs compared)
        lorakit.inject(model, cfg, adapter=f"a{i}")
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if f".a{i}." in name and name.endswith(".B"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        paths.append(lorakit.save_adapter(model, out / f"a{i}", adapter=f"a{i}"))
        lorakit.delete_adapter(model, f"a{i}")
    return paths


def start_server(
    adapters: list[Path], batch: int, extra: list[str] = ()
) -> tuple[subprocess.Popen, str]:
    cmd = [str(Path(sys.executable).parent / "lorakit"), "serve", "--port", "0",
           "--max-batch-size", str(batch), "--max-queue", "4096", *extra]  # fmt: skip
    for path in adapters:
        cmd += ["--adapter", f"{path.name}={path}"]
    env = {k: v for k, v in os.environ.items() if k != "LORAKIT_API_KEY"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    for line in proc.stdout:
        if "listening on " in line:
            return proc, line.split("listening on ")[1].split()[0]
    raise SystemExit("server did not start")


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(url: str, names: list[str], max_tokens: int, concurrency: int) -> dict:
    import httpx

    http = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency))
    start = time.perf_counter()

    texts: list[str] = [""] * len(names)

    def one(i: int) -> tuple[int, float]:
        body = {"model": names[i], "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}  # fmt: skip
        r = http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        texts[i] = r.json()["choices"][0]["message"]["content"]
        return r.json()["usage"]["completion_tokens"], time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(len(names))))
    return {**_summary(results, time.perf_counter() - start), "texts": texts}


def _summary(results: list[tuple[int, float]], seconds: float) -> dict:
    latencies = sorted(t for _, t in results)
    tokens = sum(n for n, _ in results)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "p50": pick(0.50), "p95": pick(0.95)}  # fmt: skip


def peft_way(adapters: list[Path], n_requests: int, max_tokens: int) -> dict:
    """One adapter at a time: each adapter's requests as one left-padded generate() batch."""
    from peft import PeftModel

    from lorakit.infer.chat import render_chat
    from lorakit.models.load import load_model

    base, tok = load_model("smollm2-135m", "causal-lm")
    model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name=adapters[0].name)
    for path in adapters[1:]:
        model.load_adapter(str(path), adapter_name=path.name)
    model.eval()
    tok.padding_side = "left"
    groups: dict[int, list[int]] = {}
    for i in range(n_requests):
        groups.setdefault(i % len(adapters), []).append(i)
    results, start = [], time.perf_counter()
    for a, rows in groups.items():
        model.set_adapter(adapters[a].name)
        texts = [
            render_chat(tok, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in rows
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        new = out[:, enc["input_ids"].shape[1] :]
        done = time.perf_counter() - start
        for row in new:
            ended = (row == tok.eos_token_id).nonzero()
            results.append((int(ended[0]) + 1 if len(ended) else len(row), done))
    return _summary(results, time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--no-peft", action="store_true")
    p.add_argument("--server-args", default="", help="extra `lorakit serve` flags, one string")
    p.add_argument("--label", default="", help="printed before each row (which build this is)")
    p.add_argument("--dump", help="write every reply here (JSON), to compare builds' outputs")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(Path(tmp), 64)
        proc, url = start_server(adapters, args.concurrency, args.server_args.split())
        try:
            run_load(url, ["smollm2-135m"] * 8, 4, 8)  # warm-up
            for label, k in [("base only", 0), ("8 adapters mixed", 8), ("64 adapters mixed", 64)]:
                if k == 8:  # warm-up: adapter banks built (they hold all 64 adapters)
                    run_load(url, [f"a{i % 64}" for i in range(64)], 4, 64)
                names = ["smollm2-135m" if k == 0 else f"a{i % k}" for i in range(args.requests)]
                res = run_load(url, names, args.max_tokens, args.concurrency)
                res["peak_mb"] = peak_rss_mb(proc.pid)
                rows.append((f"{args.label}{label}", res))
                print(label, {k: v for k, v in res.items() if k != "texts"}, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
        if not args.no_peft:
            res = peft_way(adapters, args.requests, args.max_tokens)
            res["peak_mb"] = peak_rss_mb()
            rows.append(("peft's way (64 adapters, one at a time)", res))
    if args.dump:
        Path(args.dump).write_text(json.dumps({label: r.get("texts") for label, r in rows}))
    base = rows[0][1]["tokens_per_s"]
    print(f"\nrequests={args.requests} concurrency={args.concurrency} max_tokens={args.max_tokens} "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    print("| scenario | tokens | seconds | tokens/s | vs base | p50 s | p95 s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / base:.2f}x | {r['p50']:.1f} | {r['p95']:.1f} | {r['peak_mb']:.0f} |")  # fmt: skip
    if len(rows) == 4:
        print(
            f"\n64 adapters mixed vs peft's way: {rows[2][1]['tokens_per_s'] / rows[3][1]['tokens_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
