"""Property-based fuzzing of `lorakit serve` from its own OpenAPI schema (schemathesis).

A real server process on 127.0.0.1 (the tiny Llama, adapter a0 loaded at start, runtime
loading allowed from the adapters' directory, --max-tokens-cap 16, an API key) gets, per
operation, a fixed number of schemathesis cases: bodies that fit the schema (positive) and
bodies that break it (negative: wrong types, missing fields, out-of-range values).
- About half of the bodies get a real model / adapter name or an allowed adapter path
  swapped in, and a quarter of the generation bodies a valid prompt, so the load, unload
  and generation paths (with fuzzed sampling fields) run, not only the 404 of an unknown
  name or the 400 of a bad message.
- Three POST cases in four get one field set to the next of a list of values a schema
  generator rarely draws (lone surrogates, NUL, 10 kB strings, 2**70, 5e-324; NaN bodies
  are the soak's, as requests will not send them), on a body with a real model and a
  valid prompt; each value of the list is sent at least once.
Every case must answer below 500, with the OpenAI error JSON on every 4xx, and never drop
the connection. Every failing input of an operation is collected (not only the first) and
listed in the assertion, with the server's answer.

Deterministic: Hypothesis derandomized, no example database. (schemathesis'
response_schema_conformance is not used: FastAPI documents 200 as `{}` and only a 422 that
the server never sends, so it would check nothing.)
"""

from __future__ import annotations

import json
import time
import zlib

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from reliability.server_fixtures import start_server

# Every operation the server documents; a new route fails test_every_operation_is_fuzzed
# until it is added here (with its number of cases).
OPERATIONS = {
    "GET /health": 5,
    "GET /metrics": 5,
    "GET /": 5,
    "GET /v1/models": 5,
    "POST /v1/completions": 80,
    "POST /v1/chat/completions": 80,
    "POST /v1/classify": 25,
    "POST /v1/load_lora_adapter": 40,
    "POST /v1/unload_lora_adapter": 40,
    "POST /v1/feedback": 60,
}


@pytest.fixture(scope="module")
def fuzz_server(llama_model_dir, tiny_adapters, tmp_path_factory):
    allowed = tiny_adapters["a0"].parent
    db = tmp_path_factory.mktemp("fuzz-feedback") / "feedback.sqlite3"  # not the user's cache
    args = ["--max-tokens-cap", "16", "--feedback-db", str(db)]
    served = start_server(llama_model_dir, {"a0": tiny_adapters["a0"]}, allowed, args)
    try:
        yield served
    finally:
        log = served.stop()
        if "Traceback" in log:  # what the server printed for any 5xx, for the reader
            print("---- server log ----\n" + log[-20000:])


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server):
    r = requests.get(fuzz_server.url + "/openapi.json", timeout=30)
    assert r.status_code == 200, r.text  # docs_url/redoc_url are off, the schema is served
    schema = schemathesis.openapi.from_dict(r.json())
    schema.config.update(base_url=fuzz_server.url)
    return schema


@pytest.fixture(scope="module")
def steer(fuzz_server):
    return Steer(fuzz_server)


def test_every_operation_is_fuzzed(fuzz_schema):
    labels = {op.ok().label for op in fuzz_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def openai_error_json(response, case) -> str | None:
    """A 4xx must carry {"error": {"message": str, "type": str, "code", "param"}}."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} without the OpenAI error JSON"
    if not (isinstance(error.get("message"), str) and isinstance(error.get("type"), str)):
        return f"{response.status_code} with a malformed error object"
    if not {"code", "param"} <= set(error):
        return f"{response.status_code} error object lacks code/param"
    return None


class Steer:
    """Swaps real names into about half of the generated bodies, chosen from a hash of the
    body (so the same case always gets the same swap)."""

    def __init__(self, served):
        self.served = served
        self.models = [served.base, "a0", "extra"]
        self.loaded: list[str] = []  # adapters this fuzz loaded (unload targets)

    def __call__(self, case) -> None:
        body = case.body
        if not isinstance(body, dict):
            return
        pick = zlib.crc32(json.dumps(body, sort_keys=True, default=repr).encode()) % 8
        if pick >= 4:
            return  # the generated body as is
        path = case.operation.path
        if path in ("/v1/completions", "/v1/chat/completions", "/v1/feedback") and "model" in body:
            body["model"] = self.models[pick % 3]
            if pick < 2:  # a valid prompt too: the sampling fields reach the engine
                if path == "/v1/completions":
                    body["prompt"] = "Once upon a time"
                elif path == "/v1/feedback":
                    body.update(prompt="Once upon a time", reply="The end", rating="up")
                    body.pop("messages", None)
                else:
                    body["messages"] = [{"role": "user", "content": "Hello there"}]
        elif path == "/v1/load_lora_adapter" and "lora_path" in body:
            allowed = self.served.allowed
            tail = body["lora_path"] if isinstance(body["lora_path"], str) else ""
            body["lora_path"] = str(allowed / "extra") if pick < 2 else str(allowed) + "/" + tail
        elif path == "/v1/unload_lora_adapter" and "lora_name" in body and self.loaded:
            body["lora_name"] = self.loaded[pick % len(self.loaded)]


# Values the schema allows (or nearly) that a JSON-schema generator rarely draws: lone
# surrogates (Hypothesis' text never has them), NUL, long strings, integers past 64 bits,
# subnormal floats. A drawn (field, value) replaces that field of the (steered) body.
_STRINGS = ["", "\x00", "\ud800", "a\udfffb", "x" * 5000, "\u202e\ufeff", "<|im_end|>"]
_NUMBERS = [2**70, -(2**70), 2**63, -1, 0, 5e-324, 1e-300, 1e308]  # NaN: requests refuses it
_SAMPLING = [
    *[("prompt", v) for v in _STRINGS],
    *[("content", v) for v in _STRINGS],
    *[("stop", v) for v in [*_STRINGS[1:], ["\ud800"], ["y" * 4000] * 4]],
    *[(f, v) for f in ("seed", "max_tokens", "temperature", "top_p") for v in _NUMBERS],
    ("temperature", 1e-30),
    ("top_p", 1e-30),
    ("model", "\ud800"),
    ("model", "\x00"),
]
NASTY = {
    "/v1/completions": _SAMPLING,
    "/v1/chat/completions": _SAMPLING,
    "/v1/classify": [("input", v) for v in [*_STRINGS, [""] * 300, ["\ud800"]]],
    "/v1/load_lora_adapter": [
        *[("lora_name", v) for v in _STRINGS],
        *[("lora_path", "{allowed}/" + v) for v in ["\x00", "a" * 10_000, "../" * 3400, "\ud800"]],
        *[("lora_path", v) for v in _STRINGS],
    ],
    "/v1/unload_lora_adapter": [("lora_name", v) for v in _STRINGS],
    "/v1/feedback": [
        *[(f, v) for f in ("prompt", "content", "reply", "better") for v in _STRINGS],
        *[("rating", v) for v in ["", "\ud800", 1, -1, None]],
        *[("response_id", v) for v in _STRINGS],
        ("model", "\ud800"),
        ("model", "\x00"),
    ],
}


def nasty(case, i: int, served) -> None:
    """Three cases in four get the next NASTY value in turn (so each value is sent, whatever
    Hypothesis draws), on a body whose model (and prompt) are real, so the value is what
    gets tested."""
    values = NASTY.get(case.operation.path)
    if not values or i % 4 == 3 or not isinstance(case.body, dict):
        return
    field, value = values[(i - i // 4) % len(values)]
    if isinstance(value, str):
        value = value.replace("{allowed}", str(served.allowed))
    body = case.body
    if case.operation.path == "/v1/completions":
        body.update(model=[served.base, "a0"][i % 2], prompt="Once upon a time")
    elif case.operation.path == "/v1/chat/completions":
        body.update(model=[served.base, "a0"][i % 2])
        body["messages"] = [{"role": "user", "content": "Hello there"}]
    elif case.operation.path == "/v1/feedback":  # a valid body but for the one value
        body.clear()
        body.update(model=[served.base, "a0"][i % 2], reply="The end", rating="down")
        if field == "content":
            body["messages"] = [{"role": "user", "content": "Hello there"}]
        elif field != "prompt":
            body["prompt"] = "Once upon a time"
    if field == "content" and "messages" in body:  # completions: the prompt, again
        body["messages"][0]["content"] = value
    else:
        body["prompt" if field == "content" else field] = value


def _describe(case) -> str:
    body = case.body
    try:
        text = json.dumps(body)
    except (TypeError, ValueError):
        text = repr(body)
    extra = {k: v for k, v in (("query", case.query), ("headers", case.headers)) if v}
    return f"{case.method} {case.path} body={text[:600]}" + (f" {extra}" if extra else "")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("label", list(OPERATIONS))
def test_no_5xx_and_no_dropped_connection(fuzz_server, fuzz_schema, steer, label):
    method, path = label.split(" ", 1)
    operation = fuzz_schema[path][method]
    modes = [GenerationMode.POSITIVE]
    if method == "POST":
        modes.append(GenerationMode.NEGATIVE)
    strategy = st.one_of([operation.as_strategy(generation_mode=m) for m in modes])
    session = requests.Session()
    failures: dict[str, str] = {}  # kind of failure -> first input that showed it
    seen = {"cases": 0, "by_status": {}}
    start = time.perf_counter()

    @settings(
        max_examples=OPERATIONS[label],
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case):
        steer(case)
        nasty(case, seen["cases"], fuzz_server)
        seen["cases"] += 1
        try:
            response = case.call(session=session, headers=fuzz_server.headers, timeout=60)
        except requests.exceptions.InvalidJSONError:
            raise  # not sent at all: a fault of this test, not of the server
        except requests.RequestException as exc:  # dropped connection, reset, timeout
            failures.setdefault(f"dropped: {type(exc).__name__}", f"{_describe(case)} -> {exc}")
            session.close()
            return
        status = response.status_code
        seen["by_status"][status] = seen["by_status"].get(status, 0) + 1
        answer = f"{_describe(case)} -> {status} {response.text[:400]}"
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.setdefault(f"{status} {response.text[:120]}", f"{answer}\n   {exc}")
        problem = openai_error_json(response, case)
        if problem:
            failures.setdefault(problem, answer)
        if path == "/v1/load_lora_adapter" and status == 200:
            steer.loaded.append(case.body["lora_name"])

    run()
    seconds = time.perf_counter() - start
    print(f"{label}: {seen['cases']} cases in {seconds:.1f}s, statuses {seen['by_status']}")
    # a route without parameters has one case; one with a body must get enough cases that
    # every NASTY value is sent (3 cases in 4 carry one)
    wanted = -(-len(NASTY.get(path, [])) * 4 // 3) if method == "POST" else 1
    assert seen["cases"] >= wanted, f"the fuzz generated only {seen['cases']} cases"
    assert not failures, f"{len(failures)} kind(s) of failure on {label}:\n" + "\n".join(
        f"- {kind}\n   {example}" for kind, example in failures.items()
    )
    health = requests.get(fuzz_server.url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
