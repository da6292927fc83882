"""Hostile clients and hostile adapter files against a real `lorakit serve` process.

Every hostile request gets a 4xx in OpenAI's error JSON (or a correct 200) — never a 5xx
or a dropped connection — while a long greedy request running beside them returns exactly
the tokens it returns alone; afterwards the server still serves, and the base and the
other tenants' adapters give what they gave before.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.models.load import load_model
from reliability.server_fixtures import LORAKIT, make_adapters, start_server

LONG = {"prompt": "Once upon a time there was", "max_tokens": 64, "temperature": 0}


def _hostile_adapters(model_dir: Path, allowed: Path, outside: Path) -> dict[str, Path]:
    """Adapter directories a hostile tenant could drop into --adapter-dir."""
    good = make_adapters(model_dir, allowed, ["extra"], seed=50)["extra"]
    dirs = {"extra": good}

    def variant(name: str, config_edit=None, tensor_edit=None) -> Path:
        path = allowed / name
        shutil.copytree(good, path)
        if config_edit:
            cfg = json.loads((path / "adapter_config.json").read_text())
            config_edit(cfg)
            (path / "adapter_config.json").write_text(json.dumps(cfg))
        if tensor_edit:
            tensors = load_file(str(path / "adapter_model.safetensors"))
            tensor_edit(tensors)
            save_file(tensors, str(path / "adapter_model.safetensors"))
        dirs[name] = path
        return path

    variant("wrong-type", lambda c: c.update(target_modules=["q_proj", 1]))
    variant("saved-five", lambda c: c.update(modules_to_save=5))
    variant("task-list", lambda c: c.update(task_type=[1]))
    variant("bad-regex", lambda c: c.update(rank_pattern={"(": 4}))
    variant("slow-regex", lambda c: c.update(rank_pattern={"(a+)+$": 4}))
    variant("nan", tensor_edit=lambda t: next(v for k, v in t.items() if "lora_B" in k).fill_(float("nan")))  # fmt: skip
    labels = variant("bad-labels")
    (labels / "labels.json").write_text("{not json")
    # an adapter that trains the base layers' biases would change the base for everyone
    model, _ = load_model(model_dir, "causal-lm")
    cfg = lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], bias="all")
    lorakit.inject(model, cfg, adapter="biased")
    dirs["biased"] = lorakit.save_adapter(model, allowed / "biased", adapter="biased")
    # a directory inside the allowed one whose weights are a link to a file outside it
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copy(good / "adapter_model.safetensors", outside / "weights.safetensors")
    escape = allowed / "escape"
    escape.mkdir()
    shutil.copy(good / "adapter_config.json", escape / "adapter_config.json")
    os.symlink(outside / "weights.safetensors", escape / "adapter_model.safetensors")
    dirs["escape"] = escape
    return dirs


@pytest.fixture(scope="module")
def hostile(llama_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    allowed = root / "allowed"
    tenant = make_adapters(llama_model_dir, allowed, ["tenant"], seed=7)
    dirs = _hostile_adapters(Path(llama_model_dir), allowed, root / "outside")
    served = start_server(
        llama_model_dir,
        tenant,
        allowed,
        ["--max-tokens-cap", "64", "--max-prompt-tokens", "200", "--max-body-bytes", "20000"],
    )
    try:
        yield served, dirs
    finally:
        log = served.stop()
        assert "Traceback" not in log, log[-4000:]


def _post(served, path: str, body=None, raw: bytes | None = None, **kw) -> httpx.Response:
    headers = {**served.headers, "content-type": "application/json", **kw.pop("headers", {})}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(served.url + path, content=content, headers=headers, timeout=120, **kw)


def _completion(served, model: str, **body) -> str:
    r = _post(served, "/v1/completions", {"model": model, **LONG, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _requests(served, dirs) -> list[tuple[str, str, object, set[int]]]:
    """(what, path, JSON body or raw bytes, acceptable statuses)."""
    base, m = served.base, {"model": "tenant"}
    chat = "/v1/chat/completions"
    cases = [
        ("empty prompt", "/v1/completions", {**m, "prompt": "", "max_tokens": 3}, {200}),
        ("tiny temperature", "/v1/completions", {**m, "prompt": "a", "temperature": 1e-30, "max_tokens": 3}, {200}),
        ("tiny top_p", "/v1/completions", {**m, "prompt": "a", "temperature": 1, "top_p": 1e-300, "max_tokens": 3}, {200}),
        ("seed 2**70", "/v1/completions", {**m, "prompt": "a", "seed": 2**70}, {400}),
        ("seed -1", "/v1/completions", {**m, "prompt": "a", "seed": -1, "temperature": 1, "max_tokens": 2}, {200}),
        ("lone surrogate prompt", "/v1/completions", b'{"model": "tenant", "prompt": "\\ud800"}', {400}),
        ("lone surrogate chat", chat, b'{"model": "tenant", "messages": [{"role": "user", "content": "a\\udfffb"}]}', {400}),
        ("huge max_tokens", "/v1/completions", {**m, "prompt": "a", "max_tokens": 10**30}, {400}),
        ("negative max_tokens", "/v1/completions", {**m, "prompt": "a", "max_tokens": -1}, {400}),
        ("long stop", "/v1/completions", {**m, "prompt": "a", "stop": ["x" * 300]}, {400}),
        ("five stops", "/v1/completions", {**m, "prompt": "a", "stop": list("abcde")}, {400}),
        ("long stops", "/v1/completions", {**m, "prompt": "a", "stop": ["ab" * 128] * 4, "max_tokens": 8}, {200}),
        ("n=2", "/v1/completions", {**m, "prompt": "a", "n": 2}, {400}),
        ("nan temperature", "/v1/completions", b'{"model": "tenant", "prompt": "a", "temperature": NaN}', {400}),
        ("long model name", "/v1/completions", {"model": "m" * 10000, "prompt": "a"}, {404}),
        ("no messages", chat, {**m, "messages": []}, {400}),
        ("tool role", chat, {**m, "messages": [{"role": "tool", "content": "x"}]}, {400}),
        ("image part", chat, {**m, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, {400}),
        ("not json", "/v1/completions", b"{nope", {400}),
        ("json array", "/v1/completions", b"[]", {400}),
        ("deep nesting", "/v1/completions", b"[" * 9000 + b"]" * 9000, {400}),
        ("over the body limit", "/v1/completions", {**m, "prompt": "x" * 30000}, {413}),
        ("too long prompt", "/v1/completions", {**m, "prompt": "word " * 300}, {400}),
        ("no classifier", "/v1/classify", {"model": "x", "input": "hi"}, {404}),
        ("unload the base", "/v1/unload_lora_adapter", {"lora_name": base}, {400}),
        ("unload unknown", "/v1/unload_lora_adapter", {"lora_name": "nobody"}, {404}),
        ("unknown route", "/v1/nothing", {}, {404}),
    ]  # fmt: skip
    allowed = served.allowed
    paths = [
        ("NUL in path", f"{allowed}/extra\x00x", {400}),
        ("overlong path", "/" + "a" * 5000, {400}),
        ("long name in path", f"{allowed}/" + "a" * 300, {400}),
        ("path outside", "/etc", {403}),
        ("dot-dot path", f"{allowed}/../../etc", {403}),
        ("linked weights", str(dirs["escape"]), {400}),
        ("biased adapter", str(dirs["biased"]), {400}),
        ("nan weights", str(dirs["nan"]), {400}),
        ("wrong field type", str(dirs["wrong-type"]), {400}),
        ("modules_to_save 5", str(dirs["saved-five"]), {400}),
        ("task_type list", str(dirs["task-list"]), {400}),
        ("bad regex", str(dirs["bad-regex"]), {400}),
        ("slow regex", str(dirs["slow-regex"]), {400}),
        ("bad labels.json", str(dirs["bad-labels"]), {400}),
    ]
    for i, (what, path, status) in enumerate(paths):  # distinct names: the loads run at once
        body = {"lora_name": f"h{i}", "lora_path": path}
        cases.append((what, "/v1/load_lora_adapter", body, status))
    cases.append(("surrogate path", "/v1/load_lora_adapter",
                  b'{"lora_name": "h", "lora_path": "/tmp/\\udc80"}', {400}))  # fmt: skip
    return cases


def test_hostile_requests_get_4xx_and_hurt_no_one(hostile):
    served, dirs = hostile
    alone = _completion(served, "tenant")
    base_alone = _completion(served, served.base)
    cases = _requests(served, dirs)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        long = pool.submit(_completion, served, "tenant")
        answers = list(
            pool.map(
                lambda c: _post(served, c[1], raw=c[2]) if isinstance(c[2], bytes) else _post(served, c[1], c[2]),
                cases,
            )
        )  # fmt: skip
        beside = long.result()
    wrong = []
    for (what, _, _, ok), r in zip(cases, answers, strict=True):
        if r.status_code not in ok:
            wrong.append(f"{what}: {r.status_code} {r.text[:200]}")
        elif r.status_code >= 400 and set(r.json().get("error", {})) < {"message", "type", "code"}:
            wrong.append(f"{what}: not OpenAI's error JSON: {r.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert beside == alone
    # nothing a hostile tenant sent changed the base or the tenant's adapter
    assert _completion(served, served.base) == base_alone
    assert _completion(served, "tenant") == alone
    models = httpx.get(served.url + "/v1/models", headers=served.headers).json()["data"]
    assert {m["id"] for m in models} == {served.base, "tenant"}  # no half-loaded name
    assert all("/" not in m["root"] for m in models)  # no server paths


def test_error_messages_name_the_field_and_hide_server_paths(hostile):
    served, dirs = hostile
    r = _post(
        served, "/v1/load_lora_adapter", {"lora_name": "h", "lora_path": str(dirs["wrong-type"])}
    )
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and "target_modules" in message
    r = _post(served, "/v1/load_lora_adapter", {"lora_name": "h", "lora_path": str(dirs["biased"])})
    assert "bias" in r.json()["error"]["message"]
    r = _post(served, "/v1/load_lora_adapter", {"lora_name": "h", "lora_path": str(dirs["escape"])})
    assert r.status_code == 400 and str(served.allowed.parent / "outside") not in r.text


def test_a_loaded_adapter_serves_and_unloads_cleanly(hostile):
    served, dirs = hostile
    base = _completion(served, served.base)
    # loaded under a name of its own (the directory's name would be loaded on first use)
    r = _post(served, "/v1/load_lora_adapter", {"lora_name": "x-tra", "lora_path": str(dirs["extra"])})  # fmt: skip
    assert r.status_code == 200, r.text
    assert _completion(served, "x-tra") != base
    assert _post(served, "/v1/unload_lora_adapter", {"lora_name": "x-tra"}).status_code == 200
    assert _post(served, "/v1/completions", {"model": "x-tra", "prompt": "a"}).status_code == 404
    assert _completion(served, served.base) == base


def test_metric_labels_stay_bounded(hostile):
    served, _ = hostile
    for i in range(40):
        httpx.get(f"{served.url}/probe-{i}")
        httpx.get(f"{served.url}/v1/probe-{i}")  # unauthenticated too
    text = httpx.get(served.url + "/metrics").text
    assert "probe-" not in text
    assert 'endpoint="other"' in text


def _run_serve(model_dir, args, env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [LORAKIT, "serve", "--model", str(model_dir), "--port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_api_key_variable_is_refused_at_start(llama_model_dir, value):
    out = _run_serve(llama_model_dir, [], {"LORAKIT_API_KEY": value})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "LORAKIT_API_KEY is set but empty" in lines[0], out.stderr


def test_without_adapter_dir_load_and_unload_are_both_off(llama_model_dir, tmp_path):
    tenant = make_adapters(llama_model_dir, tmp_path, ["tenant"])
    served = start_server(llama_model_dir, tenant, None)
    try:
        for path, body in [
            ("/v1/unload_lora_adapter", {"lora_name": "tenant"}),
            ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tenant["tenant"])}),
        ]:
            r = _post(served, path, body)
            assert r.status_code == 403 and r.json()["error"]["code"] == "adapter_loading_disabled"
        r = _post(served, "/v1/completions", {"model": "tenant", "prompt": "a", "max_tokens": 2})
        assert r.status_code == 200  # still there
    finally:
        served.stop()


def test_tensors_on_the_server_are_untouched_by_a_refused_biased_adapter(llama_model_dir, tmp_path):
    # the library half: a refused load leaves every base tensor as it was
    model, _ = load_model(llama_model_dir, "causal-lm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dirs = _hostile_adapters(Path(llama_model_dir), tmp_path / "allowed", tmp_path / "outside")
    for name in ("nan", "wrong-type", "bad-regex"):
        with pytest.raises(lorakit.LorakitError):
            lorakit.load_adapter(model, dirs[name])
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
