"""`lorakit serve --precision bf16` over real HTTP on the tiny Llama: the base, the per-row
adapter bank and the cached prompt K/V all in bf16 (half the memory), adapters loaded on
demand from disk, every request answered, and the choice printed at startup."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import httpx
import pytest
import torch

from inprocess_server import serving
from reliability.server_fixtures import make_adapters

NAMES = ["p0", "p1", "p2"]


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory, llama_model_dir):
    root = tmp_path_factory.mktemp("bf16-adapters")
    make_adapters(llama_model_dir, root, NAMES)
    return root


def _complete(url, model, prompt):
    body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}
    return httpx.post(url + "/v1/completions", json=body, timeout=120)


def test_bf16_server_keeps_base_bank_and_prefix_cache_in_bf16(
    llama_model_dir, adapter_root, monkeypatch
):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    prompt = "a shared system prompt that is longer than one block of sixteen tokens: " * 2
    with serving(
        llama_model_dir, adapter_dirs=[str(adapter_root)], precision="bf16", max_batch_size=4
    ) as (server, url):
        assert server.precision.name == "bf16"
        model = server.lm.model
        frozen = {p.dtype for n, p in model.named_parameters() if ".adapters." not in n}
        assert frozen == {torch.bfloat16}
        jobs = [(n, f"{prompt}{i}") for i, n in enumerate(NAMES * 3)] + [("tiny-llama", prompt)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda job: _complete(url, *job), jobs))
        assert [r.status_code for r in replies] == [200] * len(jobs)
        assert all(r.json()["usage"]["completion_tokens"] > 0 for r in replies)
        # adapters stay fp32 (as saved); the per-row bank is built in the base's bf16
        adapters = {p.dtype for n, p in model.named_parameters() if ".adapters." in n}
        assert adapters == {torch.float32}
        banks = [m.__dict__["_bank"] for m in model.modules() if "_bank" in m.__dict__]
        assert banks and {b.dtype for b in banks} == {torch.bfloat16}
        blocks = list(server.lm.prefix.blocks.values())
        assert blocks and {k.dtype for block in blocks for k, _ in block} == {torch.bfloat16}
        assert server.lm.prefix.hit_tokens > 0  # the shared prompt's blocks were reused


def test_serve_prints_its_precision_before_listening(llama_model_dir, tmp_path):
    code = (
        "import sys; from lorakit.cli import main; "
        f"sys.exit(main(['serve', '--model', {str(llama_model_dir)!r}, '--port', '0', "
        "'--precision', 'fp32']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        printed = "".join(lines)
        assert "precision: fp32 — asked for" in printed, printed
        assert printed.index("precision:") < printed.index("listening on")
    finally:
        proc.terminate()
        proc.wait(30)
