"""Hostile requests for the soak's hostile client: malformed, mistyped, oversized and
otherwise nasty bodies, paths and headers, each with the statuses it may fairly get
(a 4xx, or a 200 where the request is in fact valid)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Hostile:
    name: str
    method: str
    path: str
    kwargs: dict
    ok: frozenset[int]  # acceptable statuses (every one below 500)
    fresh: bool = False  # on a connection of its own (it may be closed by the server)
    stream_body: bool = False  # kwargs["content"] is a generator factory: chunked, no length

    def send(self, client: httpx.Client) -> httpx.Response:
        kwargs = dict(self.kwargs)
        if self.stream_body:
            kwargs["content"] = kwargs["content"]()
        return client.request(self.method, self.path, **kwargs)


def _4xx(*extra: int) -> frozenset[int]:
    return frozenset(range(400, 500)) | frozenset(extra)


def hostile_requests(base: str, adapter: str, allowed: Path, key: str) -> list[Hostile]:
    j = {"content-type": "application/json"}

    def raw(text: str | bytes) -> dict:
        return {"content": text.encode() if isinstance(text, str) else text, "headers": j}

    def comp(**fields) -> dict:
        return {"json": {"model": base, "prompt": "hi", "max_tokens": 4, **fields}}

    def chat(content, **fields) -> dict:
        msgs = [{"role": "user", "content": content}]
        return {"json": {"model": adapter, "messages": msgs, "max_tokens": 4, **fields}}

    def chunked(size: int) -> dict:
        def gen():  # no Content-Length: httpx sends it chunked
            piece = b" " * 65536
            yield b'{"model": "' + base.encode() + b'", "prompt": "'
            for _ in range(size // len(piece)):
                yield piece
            yield b'"}'

        return {"content": gen, "headers": j}

    big = json.dumps({"model": base, "prompt": "x" * 2_000_000})
    C, H, L, U = "/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"  # fmt: skip
    ok200 = _4xx(200)
    P = "POST"
    return [
        Hostile("malformed JSON", P, C, raw('{"model": "' + base + '", "prompt": '), _4xx()),
        Hostile("JSON null body", P, C, raw("null"), _4xx()),
        Hostile("JSON array body", P, H, raw("[1, 2]"), _4xx()),
        Hostile("empty body", P, C, raw(b""), _4xx()),
        Hostile(
            "text/plain body",
            P,
            C,
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            _4xx(),
        ),  # fmt: skip
        Hostile("deeply nested JSON", P, C, raw("[" * 50_000 + "]" * 50_000), _4xx()),
        Hostile("model is a number", P, C, {"json": {"model": 5, "prompt": "hi"}}, _4xx()),
        Hostile("prompt is a dict", P, C, comp(prompt={"a": 1}), _4xx()),
        Hostile("prompt is token ids", P, C, comp(prompt=[1, 2, 3]), _4xx()),
        Hostile("messages is a string", P, H, {"json": {"model": base, "messages": "hi"}}, _4xx()),
        Hostile(
            "image content part",
            P,
            H,
            chat([{"type": "image_url", "image_url": {"url": "x"}}]),
            _4xx(),
        ),  # fmt: skip
        Hostile("stream is a string", P, C, comp(stream="yes please"), _4xx()),
        Hostile("max_tokens 10**30", P, C, comp(max_tokens=10**30), _4xx()),
        Hostile(
            "max_tokens 1e400 (inf)",
            P,
            C,
            raw('{"model": "' + base + '", "prompt": "hi", "max_tokens": 1e400}'),
            _4xx(),
        ),  # fmt: skip
        Hostile("max_tokens -1", P, C, comp(max_tokens=-1), _4xx()),
        Hostile("max_tokens 0", P, H, chat("hi", max_tokens=0), _4xx()),
        Hostile("max_tokens over the cap", P, C, comp(max_tokens=100_000), _4xx()),
        Hostile("n 10**20", P, C, comp(n=10**20), _4xx()),
        Hostile("temperature 1e308", P, C, comp(temperature=1e308), _4xx()),
        Hostile(
            "temperature NaN",
            P,
            C,
            raw('{"model": "' + base + '", "prompt": "hi", "temperature": NaN}'),
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "top_p Infinity",
            P,
            C,
            raw('{"model": "' + base + '", "prompt": "hi", "top_p": Infinity}'),
            _4xx(),
        ),  # fmt: skip
        Hostile("temperature 1e-30", P, C, comp(temperature=1e-30, max_tokens=6), ok200),
        Hostile("temperature 1e-30 chat", P, H, chat("hello", temperature=1e-30), ok200),
        Hostile("top_p 1e-300", P, C, comp(temperature=1.0, top_p=1e-300), ok200),
        Hostile("temperature 5e-324", P, C, comp(temperature=5e-324), ok200),
        Hostile("temperature 5e-324 chat", P, H, chat("hello", temperature=5e-324), ok200),
        Hostile("top_p 5e-324", P, C, comp(temperature=0.5, top_p=5e-324), ok200),
        Hostile("seed 2**70", P, C, comp(temperature=0.7, seed=2**70), ok200),
        Hostile("seed -2**70", P, H, chat("hi", temperature=0.7, seed=-(2**70)), ok200),
        Hostile("seed -1", P, C, comp(temperature=0.7, seed=-1), ok200),
        Hostile(
            "lone surrogate prompt",
            P,
            C,
            raw('{"model": "' + base + '", "prompt": "a\\ud800b", "max_tokens": 4}'),
            ok200,
        ),  # fmt: skip
        Hostile(
            "lone surrogate chat",
            P,
            H,
            raw(
                '{"model": "'
                + adapter
                + '", "messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 4}'
            ),
            ok200,
        ),  # fmt: skip
        Hostile(
            "lone surrogate stop",
            P,
            C,
            raw('{"model": "' + base + '", "prompt": "hi", "stop": ["\\ud800"], "max_tokens": 4}'),
            ok200,
        ),  # fmt: skip
        Hostile(
            "lone surrogate model", P, C, raw('{"model": "\\ud800", "prompt": "hi"}'), _4xx()
        ),  # fmt: skip
        Hostile("empty prompt", P, C, comp(prompt=""), ok200),
        Hostile("empty prompt streamed", P, C, comp(prompt="", stream=True), ok200),
        Hostile("empty chat content", P, H, chat(""), ok200),
        Hostile("NUL in prompt", P, C, comp(prompt="a\u0000b"), ok200),
        Hostile("prompt over the context", P, C, comp(prompt="word " * 200), _4xx()),
        Hostile("long stop strings", P, C, comp(stop=["y" * 4000] * 4, max_tokens=8), ok200),
        Hostile("five stop strings", P, C, comp(stop=["a", "b", "c", "d", "e"]), _4xx()),
        Hostile("unknown model", P, C, comp(model="no-such-model"), frozenset({404})),
        Hostile(
            "oversized body",
            P,
            C,
            {"content": big.encode(), "headers": j},
            frozenset({413}),
            fresh=True,
        ),  # fmt: skip
        Hostile(
            "oversized chunked body",
            P,
            C,
            chunked(2_000_000),
            frozenset({413}),
            fresh=True,
            stream_body=True,
        ),  # fmt: skip
        Hostile("non-UTF-8 body", P, C, raw(b'\xff\xfe{"model": "x"}'), _4xx()),
        Hostile(
            "non-UTF-8 in a string",
            P,
            C,
            raw(b'{"model": "' + base.encode() + b'", "prompt": "\xff\xc3("}'),
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "tools",
            P,
            H,
            chat("hi", tools=[{"type": "function", "function": {"name": "f"}}]),
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "NUL in lora_path",
            P,
            L,
            {"json": {"lora_name": "nul", "lora_path": str(allowed) + "/\u0000x"}},
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "10 kB lora_path",
            P,
            L,
            {"json": {"lora_name": "long", "lora_path": str(allowed) + "/" + "a" * 10_000}},
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "10 kB of ../ in lora_path",
            P,
            L,
            {"json": {"lora_name": "dots", "lora_path": str(allowed) + "/" + "../" * 3400}},
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "lora_path outside", P, L, {"json": {"lora_name": "etc", "lora_path": "/etc"}}, _4xx()
        ),  # fmt: skip
        Hostile(
            "lora_path is a file",
            P,
            L,
            {
                "json": {
                    "lora_name": "file",
                    "lora_path": str(allowed / adapter / "adapter_config.json"),
                }
            },
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "lora_path is the allowed dir",
            P,
            L,
            {"json": {"lora_name": "root", "lora_path": str(allowed)}},
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "bad lora_name",
            P,
            L,
            {"json": {"lora_name": "../x", "lora_path": str(allowed / adapter)}},
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "load an existing name",
            P,
            L,
            {"json": {"lora_name": adapter, "lora_path": str(allowed / adapter)}},
            frozenset({409}),
        ),  # fmt: skip
        Hostile("unload the base", P, U, {"json": {"lora_name": base}}, _4xx()),
        Hostile("unload unknown", P, U, {"json": {"lora_name": "never-loaded"}}, frozenset({404})),
        Hostile("unload NUL name", P, U, {"json": {"lora_name": "\u0000"}}, _4xx()),
        Hostile(
            "classify without a classifier",
            P,
            "/v1/classify",
            {"json": {"model": base, "input": "x"}},
            _4xx(),
        ),  # fmt: skip
        Hostile(
            "wrong API key",
            "GET",
            "/v1/models",
            {"headers": {"Authorization": "Bearer " + key[:-1] + "x"}},
            frozenset({401}),
        ),  # fmt: skip
        Hostile("GET on a POST route", "GET", C, {}, _4xx()),
    ]
