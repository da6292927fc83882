"""Limits over real HTTP: an in-process uvicorn on 127.0.0.1 with a tiny model, so the
test can hold the engine still (queue, deadlines, disconnects, health) deterministically."""

import json
import socket
import threading
import time

import httpx
import pytest

from engine_hold import held
from inprocess_server import serving


@pytest.fixture
def tiny_server(llama_model_dir, monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    with serving(llama_model_dir, max_queue=1, max_batch_size=1) as served:
        yield served


def test_a_full_queue_answers_429_and_serving_goes_on(tiny_server):
    server, url = tiny_server
    gate, entered = threading.Event(), threading.Event()

    def hold():
        entered.set()
        gate.wait()

    holder = threading.Thread(target=server.lm.engine.call, args=(hold,))
    holder.start()
    assert entered.wait(10)
    body = {"model": server.lm.id, "prompt": "hello", "max_tokens": 3, "temperature": 0}
    results = {}

    def first():
        results["first"] = httpx.post(url + "/v1/completions", json=body, timeout=60)

    waiting = threading.Thread(target=first)
    waiting.start()
    deadline = time.time() + 10
    while server.lm.engine.load()[0] < 1 and time.time() < deadline:  # queued, engine held
        time.sleep(0.01)
    second = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "queue_full"
    gate.set()
    waiting.join(60)
    holder.join(10)
    assert results["first"].status_code == 200
    assert results["first"].json()["usage"]["completion_tokens"] >= 1
    assert httpx.post(url + "/v1/completions", json=body, timeout=60).status_code == 200


@pytest.mark.parametrize(
    "extra, word",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_features_we_cannot_honour_are_refused_not_ignored(tiny_server, extra, word):
    server, url = tiny_server
    body = {"model": server.lm.id, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and word in r.json()["error"]["message"]


def test_deadline_disconnect_and_health(llama_model_dir, monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    with serving(llama_model_dir, request_timeout=0.5, stall_timeout=0.3) as (server, url):
        engine = server.lm.engine
        body = {"model": server.lm.id, "prompt": "hello", "max_tokens": 3, "temperature": 0}
        assert httpx.get(url + "/health").status_code == 200
        with held(engine):
            # a request that cannot start in time gets a 408 in OpenAI's error JSON
            r = httpx.post(url + "/v1/completions", json=body, timeout=30)
            assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
            # the engine is stuck with work waiting: /health says so
            later = {}
            waiting = threading.Thread(
                target=lambda: later.update(r=httpx.post(url + "/v1/completions", json=body, timeout=30))
            )  # fmt: skip
            waiting.start()
            time.sleep(0.6)
            health = httpx.get(url + "/health")
            assert health.status_code == 503 and "no progress" in health.json()["reason"]
            waiting.join(30)
        assert later["r"].status_code == 408  # it waited past its deadline too
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.post(url + "/v1/completions", json=body, timeout=30).status_code == 200


def test_a_client_that_leaves_a_non_streaming_request_frees_it(llama_model_dir, monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    with serving(llama_model_dir) as (server, url):
        engine = server.lm.engine
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"model": server.lm.id, "prompt": "hi", "max_tokens": 50}).encode()
        with held(engine):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.time() + 10
            while engine.load()[0] < 1 and time.time() < deadline:
                time.sleep(0.01)
            waiting = engine._waiting[0]
            sock.close()  # the client goes away while its request waits
            deadline = time.time() + 10
            while not waiting.cancelled and time.time() < deadline:
                time.sleep(0.05)
            assert waiting.cancelled
        deadline = time.time() + 10
        while engine.load() != (0, 0) and time.time() < deadline:
            time.sleep(0.05)
        assert engine.load() == (0, 0) and waiting.generated == []  # dropped, never decoded


def test_chunked_bodies_count_toward_the_limit(llama_model_dir, monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    with serving(llama_model_dir, max_body_bytes=4096) as (server, url):
        prompt = "x" * 6000
        payload = json.dumps({"model": server.lm.id, "prompt": prompt}).encode()

        def chunks():  # no Content-Length: transfer-encoding chunked
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]

        headers = {"content-type": "application/json"}
        r = httpx.post(url + "/v1/completions", content=chunks(), headers=headers, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        small = json.dumps({"model": server.lm.id, "prompt": "hi", "max_tokens": 2}).encode()
        r = httpx.post(url + "/v1/completions", content=iter([small]), headers=headers, timeout=30)
        assert r.status_code == 200, r.text


def test_load_is_invisible_until_done_and_unload_counts_queued_requests(
    llama_model_dir, tmp_path, monkeypatch
):
    from reliability.server_fixtures import make_adapters

    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    paths = make_adapters(llama_model_dir, tmp_path / "allowed", ["tenant", "late"])
    settings = dict(adapters={"tenant": str(paths["tenant"])}, adapter_dirs=[str(tmp_path)])
    with serving(llama_model_dir, **settings) as (server, url):
        load = {"lora_name": "late", "lora_path": str(paths["late"])}
        loaded = {}
        with held(server.lm.engine):
            thread = threading.Thread(
                target=lambda: loaded.update(r=httpx.post(url + "/v1/load_lora_adapter", json=load, timeout=60))
            )  # fmt: skip
            thread.start()
            deadline = time.time() + 10
            while "late" not in server.catalog.pending and time.time() < deadline:
                time.sleep(0.01)
            ids = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
            assert "late" not in ids  # reserved, not listed: its attach has not run
            again = httpx.post(url + "/v1/load_lora_adapter", json=load, timeout=60)
            assert again.status_code == 409
            # a request for "tenant" waits in the queue: the unload, which runs on the engine
            # thread after the step that admits it, must count it
            body = {"model": "tenant", "prompt": "hi", "max_tokens": 200}  # still running then
            queued = threading.Thread(target=httpx.post, args=(url + "/v1/completions",),
                                      kwargs={"json": body, "timeout": 60})  # fmt: skip
            queued.start()
            deadline = time.time() + 30
            while server.lm.engine.load()[0] < 1 and time.time() < deadline:
                time.sleep(0.01)
            assert server.lm.engine.uses("tenant") == 1
            unload = {}
            unloading = threading.Thread(
                target=lambda: unload.update(r=httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "tenant"}, timeout=60))
            )  # fmt: skip
            unloading.start()
            while len(server.lm.engine._calls) < 2 and time.time() < deadline:
                time.sleep(0.01)  # the load's attach and the unload both wait for the engine
            assert len(server.lm.engine._calls) == 2
        thread.join(30)
        unloading.join(30)
        queued.join(30)
        assert loaded["r"].status_code == 200
        assert "late" in {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert (
            unload["r"].status_code == 409
            and unload["r"].json()["error"]["code"] == "adapter_in_use"
        )
        r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "tenant"}, timeout=60)
        assert r.status_code == 200  # nothing uses it now
