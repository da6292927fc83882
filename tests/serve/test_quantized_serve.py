"""`lorakit serve --quantize int8` over real HTTP on the tiny Llama: the base's Linear and
Embedding weights held as int8 codes, adapters injected over them at start and on demand,
the packed int8 kernel in small decode steps and its roundings in larger ones, so every
reply of a mixed batch equals the same request sent alone."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
import torch

from inprocess_server import serving
from lorakit.lora import LoraLayer
from lorakit.models import int8_kernel
from lorakit.models.quant_layers import Int8Embedding, Int8Linear
from reliability.server_fixtures import make_adapters

NAMES = ["q0", "q1", "q2"]


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory, llama_model_dir):
    root = tmp_path_factory.mktemp("int8-adapters")
    make_adapters(llama_model_dir, root, NAMES)
    return root


def _complete(url, model, prompt):
    body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    reply = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def test_int8_server_batches_adapters_over_int8_codes_like_solo_requests(
    llama_model_dir, adapter_root, monkeypatch
):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    # the packed kernel for steps of up to 2 rows whatever this CPU's probe says: a solo
    # request decodes through it, a mixed batch through the converted path with its roundings
    monkeypatch.setattr(int8_kernel, "packed_rows_limit", lambda: 2)
    jobs = [(m, f"tell me about number {i}") for i, m in enumerate([*NAMES, "tiny-llama"] * 2)]
    with serving(
        llama_model_dir,
        adapters={"q0": str(adapter_root / "q0")},  # at start; q1, q2 on first use
        adapter_dirs=[str(adapter_root)],
        quantize="int8",
        max_batch_size=8,
    ) as (server, url):
        model = server.lm.model
        assert isinstance(model.model.embed_tokens, Int8Embedding)
        assert isinstance(model.lm_head, Int8Linear)
        solo = [_complete(url, *job) for job in jobs]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            mixed = list(pool.map(lambda job: _complete(url, *job), jobs))
        wrapped = [m for m in model.modules() if isinstance(m, LoraLayer)]
        assert wrapped and all(isinstance(m.base_layer, Int8Linear) for m in wrapped)
        assert {n for m in wrapped for n in m.adapters} == set(NAMES)
        frozen = [p for n, p in model.named_parameters() if ".adapters." not in n]
        assert all(p.dtype == torch.float32 for p in frozen)  # norms only: no fp32 weights
        assert not any(p.dim() == 2 for p in frozen)
    assert mixed == solo
    assert len(set(solo[:4])) == 4  # each adapter (and the base) answers its own way


def test_an_adapter_with_its_own_head_is_refused_on_an_int8_base(
    llama_model_dir, adapter_root, tmp_path, monkeypatch
):
    # modules_to_save trains a full copy of the head: a quantized head's codes cannot hold
    # it, so loading it is a 400 and the adapters already served go on as before
    import lorakit
    from lorakit.models.load import load_model

    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    model, _ = load_model(llama_model_dir, "causal-lm")
    config = lorakit.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    lorakit.inject(model, config)
    headed = lorakit.save_adapter(model, adapter_root / "headed")
    with serving(llama_model_dir, adapter_dirs=[str(adapter_root)], quantize="int8") as (_, url):
        before = _complete(url, "q1", "hello")
        body = {"lora_name": "mine", "lora_path": str(headed)}
        refused = httpx.post(url + "/v1/load_lora_adapter", json=body, timeout=60)
        assert refused.status_code == 400, refused.text
        assert "quantized" in refused.json()["error"]["message"]
        on_demand = httpx.post(
            url + "/v1/completions",
            json={"model": "headed", "prompt": "hello", "max_tokens": 2},
            timeout=60,
        )
        assert on_demand.status_code == 400, on_demand.text
        assert _complete(url, "q1", "hello") == before
        names = {m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]}
        assert "mine" not in names and "headed" not in names
