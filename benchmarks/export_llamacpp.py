"""Which runtime to deploy an exported adapter on: llama.cpp vs lorakit, same prompts, one run.

    .venv/bin/python benchmarks/export_llamacpp.py [--prompts 8] [--tokens 64] [--rounds 3]

SmolLM2-135M (the packaged Q4_1 GGUF) with one r=8 all-linear adapter (random B, so it
changes the output). Variants, interleaved round by round:
  llama.cpp  Q4_1 base + LoRA GGUF   (`lorakit export --format gguf-lora`)
  llama.cpp  merged q8_0 GGUF        (`lorakit export --format gguf --dtype q8_0`)
  llama.cpp  merged f16 GGUF         (`--dtype f16`)
  lorakit    `lorakit generate`'s path (its own decode loop, fp32, adapter unmerged), batch 1
  lorakit    the same with `--quantize int8` (int8 base, torch's int8 kernel where faster)
  transformers  `generate` behind a TextIteratorStreamer on the plain fp32 model (issue
             #15's reference) and on the unmerged-adapter model
  lorakit    `lorakit serve` (a real server process, streamed chat completions), one client,
             fp32 and `--quantize int8`
Prompts are serve_load's open-ended requests (long replies) through the chat template;
every runtime stops at the end-of-text token or --tokens, greedy, one request at a time:
time to first token (prompt processed + first token) and decode tokens/s after it. Then the aggregate
with --clients concurrent requests: llama.cpp's Python binding runs one sequence at a time,
`lorakit serve` batches them (and would batch different adapters together).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lorakit
from lorakit.export.config import ExportConfig
from lorakit.export.run import export
from lorakit.infer.load import load_for_inference
from lorakit.models.paths import alias_path

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import PROMPTS, start_server  # noqa: E402 (the same requests and server start)


def _turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _adapter(directory: Path) -> Path:
    model, _, _, _ = load_for_inference("smollm2-135m")
    torch.manual_seed(0)
    lorakit.inject(model, lorakit.LoraConfig(r=8, alpha=16, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.01)
    path = lorakit.save_adapter(model, directory / "adapter")
    (path / "lorakit_train_config.json").write_text('{"model": "smollm2-135m"}')
    return path


def _llama_run(gguf, lora, prompts, tokens):
    from llama_cpp import Llama

    model = Llama(str(gguf), lora_path=lora and str(lora), n_ctx=512, n_threads=2, verbose=False)
    try:

        def run(ids):
            start, first, n = time.perf_counter(), None, 0
            for token in model.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                if token == model.token_eos():
                    break
                n += 1
                first = first or time.perf_counter()
                if n == tokens:
                    break
            return first - start, (n - 1) / (time.perf_counter() - first)

        return [run(ids) for ids in prompts]
    finally:
        model.close()


def _transformers_run(model, tokenizer, prompts, tokens):
    """transformers' `generate` in a thread behind a TextIteratorStreamer: how a transformers
    user streams (and what `lorakit generate` ran before its own decode loop)."""
    from transformers import TextIteratorStreamer

    out = []
    for ids in prompts:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        x = torch.tensor([ids])
        kwargs = dict(input_ids=x, attention_mask=torch.ones_like(x), streamer=streamer)
        kwargs |= dict(max_new_tokens=tokens, do_sample=False)
        start = time.perf_counter()
        import threading

        thread = threading.Thread(target=lambda k=kwargs: model.generate(**k))
        thread.start()
        first, text = None, ""
        for piece in streamer:
            first = first or time.perf_counter()
            text += piece
        thread.join()
        end = time.perf_counter()
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        out.append((first - start, (n - 1) / (end - first)))
    return out


def _lorakit_run(model, tokenizer, templated, tokens):
    """`lorakit generate`'s path: lorakit.infer.generate.stream (its own decode loop) on the
    chat-templated prompts (it tokenizes them to the same ids as the other runtimes get)."""
    from lorakit.infer.generate import stream

    out = []
    for prompt in templated:
        start, first, text = time.perf_counter(), None, ""
        for piece in stream(model, tokenizer, prompt, max_new_tokens=tokens):
            first = first or time.perf_counter()
            text += piece
        end = time.perf_counter()
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        out.append((first - start, (n - 1) / (end - first)))
    return out


def _serve_run(url, texts, tokens):
    import json

    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=600) as http:
        for text in texts:
            body = {"model": "mood", "max_tokens": tokens, "temperature": 0, "stream": True,
                    "messages": _turn(text), "stream_options": {"include_usage": True}}  # fmt: skip
            start, first, n = time.perf_counter(), None, 0
            with http.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        n = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = first or time.perf_counter()
            out.append((first - start, (n - 1) / (time.perf_counter() - first)))
    return out


def _concurrent(run_one, jobs: list, clients: int) -> float:
    """Completion tokens per second of `jobs` sent by `clients` threads."""
    import concurrent.futures

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(run_one, jobs))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="lorakit-export-bench-"))
    adapter = _adapter(work)
    lora = export(
        ExportConfig(format="gguf-lora", adapter=str(adapter), output=str(work / "a.gguf"))
    )[0]
    q8 = export(ExportConfig(adapter=str(adapter), output=str(work / "q8.gguf"), dtype="q8_0"))[0]
    f16 = export(ExportConfig(adapter=str(adapter), output=str(work / "f16.gguf"), dtype="f16"))[0]
    model, tokenizer, _, _ = load_for_inference("smollm2-135m", adapter)
    int8, _, _, _ = load_for_inference("smollm2-135m", adapter, quantize="int8")
    plain, _, _, _ = load_for_inference("smollm2-135m")
    texts = (PROMPTS * args.prompts)[: args.prompts]
    templated = [
        tokenizer.apply_chat_template(_turn(t), tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in templated]
    variants = {
        "llama.cpp Q4_1 base + LoRA GGUF": lambda: _llama_run(
            alias_path("smollm2-135m"), lora, prompts, args.tokens
        ),
        "llama.cpp merged q8_0 GGUF": lambda: _llama_run(q8, None, prompts, args.tokens),
        "llama.cpp merged f16 GGUF": lambda: _llama_run(f16, None, prompts, args.tokens),
        "lorakit generate (fp32, adapter unmerged)": lambda: _lorakit_run(
            model, tokenizer, templated, args.tokens
        ),
        "lorakit generate --quantize int8 (adapter unmerged)": lambda: _lorakit_run(
            int8, tokenizer, templated, args.tokens
        ),
        "transformers generate (fp32, no adapter)": lambda: _transformers_run(
            plain, tokenizer, prompts, args.tokens
        ),
        "transformers generate (fp32, adapter unmerged)": lambda: _transformers_run(
            model, tokenizer, prompts, args.tokens
        ),
    }

    adapter = adapter.rename(adapter.parent / "mood")
    server, url = start_server([adapter], args.clients)
    server8, url8 = start_server([adapter], args.clients, ["--quantize", "int8"])
    variants["lorakit serve (fp32, one client)"] = lambda: _serve_run(url, texts, args.tokens)
    variants["lorakit serve --quantize int8, one client"] = lambda: _serve_run(
        url8, texts, args.tokens
    )
    results = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved: a slow spell hits every variant alike
        for name, run in variants.items():
            results[name] += run()
    aggregate = _aggregates({"fp32": url, "--quantize int8": url8}, q8, texts, prompts, args)
    server.terminate()
    server8.terminate()
    flags = subprocess.run(
        "grep -o 'amx[a-z0-9_]*\\|avx512_bf16\\|avx2' /proc/cpuinfo | sort -u | tr '\\n' ' '",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout
    print(
        f"CPU flags: {flags or '(none)'}; torch threads 2; prompts {args.prompts} x {args.rounds} rounds, "
        f"{args.tokens} new tokens, prompt {statistics.mean(map(len, prompts)):.0f} tokens avg"
    )
    print("| runtime | time to first token (median) | decode tokens/s (median) |")
    print("|---|---|---|")
    base = statistics.median(r[1] for r in results["transformers generate (fp32, no adapter)"])
    for name, rows in results.items():
        ttft, tps = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(
            f"| {name} | {ttft * 1000:.0f} ms | {tps:.1f} ({tps / base:.2f}x transformers fp32) |"
        )
    print(f"\n{args.clients} concurrent requests of {args.tokens} tokens, completion tokens/s:")
    for name, rate in aggregate.items():
        print(f"- {name}: {rate:.1f}")
    sys.stdout.flush()


def _aggregates(urls: dict, q8, texts, prompts, args) -> dict:
    import httpx
    from llama_cpp import Llama

    jobs = [texts[i % len(texts)] for i in range(2 * args.clients)]

    def serve_one(url, text):
        body = {"model": "mood", "max_tokens": args.tokens, "temperature": 0,
                "messages": _turn(text)}  # fmt: skip
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        return reply.json()["usage"]["completion_tokens"]

    model = Llama(str(q8), n_ctx=512, n_threads=2, verbose=False)

    def llama_one(ids):  # the binding holds one context: requests queue behind each other
        return len(_llama_tokens(model, ids, args.tokens))

    try:
        llama_jobs = [prompts[i % len(prompts)] for i in range(len(jobs))]
        rates = {
            "llama.cpp merged q8_0 (one sequence at a time)": _concurrent(llama_one, llama_jobs, 1)
        }
        for name, url in urls.items():
            rates[f"lorakit serve {name} ({args.clients} clients, batched)"] = _concurrent(
                lambda text, url=url: serve_one(url, text), jobs, args.clients
            )
        return rates
    finally:
        model.close()


def _llama_tokens(model, ids, tokens) -> list[int]:
    out = []
    for token in model.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        if token == model.token_eos():
            break
        out.append(token)
        if len(out) == tokens:
            break
    return out


if __name__ == "__main__":
    main()
