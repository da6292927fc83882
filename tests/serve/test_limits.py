"""Queue limits over real HTTP: an in-process uvicorn on 127.0.0.1 with a tiny model, so the
test can hold the engine still and fill the queue deterministically."""

import socket
import threading
import time

import httpx
import pytest
import uvicorn

from lorakit.serve.app import Server, create_app
from lorakit.serve.config import ServeConfig


@pytest.fixture
def tiny_server(llama_model_dir, monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    server = Server(ServeConfig(model=str(llama_model_dir), max_queue=1, max_batch_size=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(server), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.01)
    yield server, f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(10)
    server.close()


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
