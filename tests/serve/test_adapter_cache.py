"""The adapter cache: bank, memory and disk tiers on a real tiny model with saved adapters
(LRU eviction, never of a busy adapter; reads from disk off the engine thread), and over
real HTTP: adapters loaded on first use from --adapter-dir, a broken one a 400 for its own
request only, more adapters than the bank holds all answered with their own outputs."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import threading

import httpx
import pytest

from inprocess_server import serving
from lorakit.adapters import read_adapter
from lorakit.errors import AdapterMismatchError
from lorakit.lora import list_adapters
from lorakit.models.load import load_model
from lorakit.serve.adapter_cache import AdapterCache
from reliability.server_fixtures import make_adapters

NAMES = [f"t{i}" for i in range(5)]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, llama_model_dir):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(llama_model_dir, root, NAMES)
    return root


@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory, smollm2):
    """The HTTP tests use the real SmolLM2: its replies are text (the tiny byte model's are
    mostly invalid UTF-8, so different adapters can read the same)."""
    root = tmp_path_factory.mktemp("smol-adapters")
    make_adapters(smollm2["dir"], root, NAMES)
    return root


def _cache(llama_model_dir, max_loras, max_cpu_loras):
    model, _ = load_model(llama_model_dir, "causal-lm")
    woken = threading.Event()
    reads = []

    def reader(path, confine):
        reads.append(path.name)
        return read_adapter(path, confine=confine)

    cache = AdapterCache(model, max_loras, max_cpu_loras, reader=reader, wake=woken.set)
    return cache, woken, reads


def _register(cache, adapter_dir, name):
    cache.register(name, adapter_dir / name, False, cache.read(adapter_dir / name, False))


def test_lru_eviction_never_takes_a_busy_adapter(llama_model_dir, adapter_dir):
    cache, _, _ = _cache(llama_model_dir, max_loras=2, max_cpu_loras=5)
    for name in NAMES[:3]:
        _register(cache, adapter_dir, name)
    assert list(cache.bank) == ["t0", "t1"] and cache.status("t2") == "memory"
    assert set(list_adapters(cache.model)) == {"t0", "t1"}
    cache.touch(["t0"])  # t1 is now the least recently used
    cache.prepare(["t2"], busy={"t0", "t1"})  # both busy: nothing evicted, t1 drains
    assert list(cache.bank) == ["t1", "t0"] and cache.draining == {"t1"}
    assert not cache.admissible("t1") and cache.admissible("t0")
    cache.prepare(["t2"], busy={"t1"})  # t0 idle now: it goes, although t1 is older
    assert set(cache.bank) == {"t1", "t2"} and cache.status("t0") == "memory"
    assert set(list_adapters(cache.model)) == {"t1", "t2"}
    cache.prepare(["t0"], busy=set())  # idle: the least recently used (t1) goes
    assert list(cache.bank) == ["t2", "t0"]
    assert cache.admissible(None) and cache.draining == set()


def test_memory_tier_is_bounded_and_reads_happen_off_the_engine_thread(
    llama_model_dir, adapter_dir
):
    cache, woken, reads = _cache(llama_model_dir, max_loras=1, max_cpu_loras=2)
    for name in NAMES[:4]:
        _register(cache, adapter_dir, name)
    assert list(cache.bank) == ["t0"] and list(cache.memory) == ["t2", "t3"]
    assert cache.status("t1") == "disk"
    reads.clear()
    cache.prepare(["t1"], busy=set())  # not in memory: a read starts, nothing attached yet
    assert woken.wait(30)
    assert reads == ["t1"] and cache.status("t1") == "memory" and list(cache.bank) == ["t0"]
    cache.prepare(["t1"], busy=set())
    assert list(cache.bank) == ["t1"] and list(cache.memory) == ["t3", "t1"]


def test_a_broken_file_on_reload_is_reported_for_its_requests(
    llama_model_dir, adapter_dir, tmp_path
):
    shutil.copytree(adapter_dir / "t1", tmp_path / "t1")
    cache, woken, _ = _cache(llama_model_dir, max_loras=1, max_cpu_loras=1)
    _register(cache, adapter_dir, "t0")  # in the bank
    _register(cache, tmp_path, "t1")
    _register(cache, adapter_dir, "t2")  # t1 leaves memory (disk only now)
    assert cache.status("t1") == "disk"
    (tmp_path / "t1" / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    cache.prepare(["t1"], busy=set())
    assert woken.wait(30)
    failures = cache.take_failures()
    assert set(failures) == {"t1"} and "safetensors" in failures["t1"]
    assert str(tmp_path) not in failures["t1"]  # the name, not the server's path
    assert cache.take_failures() == {}


def test_an_adapter_for_another_model_is_refused_at_registration(llama_model_dir, tmp_path):
    import lorakit
    from tiny_models import tiny_gpt2

    model = tiny_gpt2()  # its c_attn modules: the llama below has none
    lorakit.inject(model, lorakit.LoraConfig(r=2, alpha=4), adapter="g")
    lorakit.save_adapter(model, tmp_path / "g", adapter="g")
    cache, _, _ = _cache(llama_model_dir, max_loras=2, max_cpu_loras=4)
    with pytest.raises(AdapterMismatchError):
        _register(cache, tmp_path, "g")
    assert cache.known == {} and list_adapters(cache.model) == []


# -- over HTTP ------------------------------------------------------------------------------------
def _chat(url, model, text, max_tokens=5):
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def _metric(url, name):
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def reference(smollm2, smol_adapters):
    """Every adapter's greedy reply, from a server holding them all from the start."""
    adapters = {n: str(smol_adapters / n) for n in NAMES}
    with serving(smollm2["dir"], adapters=adapters, max_loras=8) as (server, url):
        replies = {n: _chat(url, n, f"hello {n}").json()["choices"][0]["message"]["content"]
                   for n in NAMES}  # fmt: skip
    # each adapter changes the reply: serving one with another's weights would show
    assert len({_chat_text for _chat_text in replies.values()}) == len(NAMES)
    return replies


def test_more_adapters_than_the_bank_holds_are_all_served(
    smollm2, smol_adapters, reference, monkeypatch
):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    with serving(
        smollm2["dir"], adapter_dirs=[str(smol_adapters)], max_loras=2, max_cpu_loras=3,
        max_batch_size=4,
    ) as (server, url):  # fmt: skip
        names = NAMES * 4
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda n: _chat(url, n, f"hello {n}"), names))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        for name, r in zip(names, replies, strict=True):
            assert r.json()["choices"][0]["message"]["content"] == reference[name]
        assert len(server.lm.adapters.bank) <= 2 and len(server.lm.adapters.memory) <= 3
        assert _metric(url, "lorakit_adapter_evictions_total") >= 3
        assert _metric(url, "lorakit_adapter_cache_misses_total") >= 5
        hits = _metric(url, "lorakit_adapter_cache_hits_total")
        assert hits + _metric(url, "lorakit_adapter_cache_misses_total") == len(names)
        assert _metric(url, 'lorakit_adapter_load_seconds_count{stage="read"}') >= 5
        models = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert {models[n]["residency"] for n in NAMES} <= {"bank", "memory", "disk"}
        assert sum(models[n]["residency"] == "bank" for n in NAMES) == 2


def test_on_demand_loading_and_its_refusals(smollm2, smol_adapters, reference, tmp_path,
                                            monkeypatch):  # fmt: skip
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    root = tmp_path / "dir"
    root.mkdir()
    shutil.copytree(smol_adapters / "t1", root / "good")
    shutil.copytree(smol_adapters / "t2", root / "broken")
    (root / "broken" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    shutil.copytree(smol_adapters / "t3", tmp_path / "outside")
    (root / "escape").symlink_to(tmp_path / "outside")
    shutil.copytree(smol_adapters / "t4", root / ".hidden")
    cfg = json.loads((smol_adapters / "t1" / "adapter_config.json").read_text())
    (root / "classifier").mkdir()
    (root / "classifier" / "adapter_config.json").write_text(
        json.dumps({**cfg, "task_type": "SEQ_CLS"})
    )
    with serving(smollm2["dir"], adapter_dirs=[str(root)]) as (server, url):
        listed = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert "good" not in listed
        avail = httpx.get(url + "/v1/models", params={"available": "true"}).json()["data"]
        assert {m["id"] for m in avail if m.get("residency") == "disk"} >= {"good", "broken"}
        assert not {".hidden", "escape"} & {m["id"] for m in avail}
        # a broken adapter fails its own request, while another request goes on beside it
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            bad = pool.submit(_chat, url, "broken", "hi")
            ok = pool.submit(_chat, url, "good", "hello t1")
            bad, ok = bad.result(), ok.result()
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_adapter"
        assert str(root) not in bad.text
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == reference["t1"]
        models = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert models["good"]["residency"] == "bank" and "broken" not in models
        assert _chat(url, "classifier", "hi").status_code == 400
        for name in ("escape", ".hidden", "..", "../outside", "nope", "good/../good"):
            r = _chat(url, name, "hi")
            assert r.status_code == 404, (name, r.text)
        # the same name named by many requests at once is loaded once
        shutil.copytree(smol_adapters / "t0", root / "fresh")
        before = _metric(url, 'lorakit_adapter_load_seconds_count{stage="read"}') or 0
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            many = list(pool.map(lambda _: _chat(url, "fresh", "hello t0"), range(6)))
        assert [r.status_code for r in many] == [200] * 6
        assert {r.json()["choices"][0]["message"]["content"] for r in many} == {reference["t0"]}
        assert _metric(url, 'lorakit_adapter_load_seconds_count{stage="read"}') == before + 1
    # without --adapter-dir nothing is loaded on demand
    with serving(smollm2["dir"]) as (server, url):
        assert _chat(url, "good", "hi").status_code == 404
