"""`lorakit serve` as users run it: a real process on 127.0.0.1 with the real SmolLM2 and
MiniLM, PEFT adapter directories, and the official openai client."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.models.load import load_model
from reliability.server_fixtures import wait_until_listening

KEY = "test-key-0123456789"
PAGE = Path(__file__).parents[2] / "examples" / "empathetic-chat" / "index.html"
PROMPTS = ["Tell me about cats.", "What is 2+2?", "Write a haiku about rain.", "Name a color."]


def _lm_adapters(model_dir: Path, out: Path) -> dict[str, Path]:
    model, _ = load_model(model_dir, "causal-lm")
    paths = {}
    for i, name in enumerate(["calm", "cheerful", "spare"]):
        cfg = lorakit.LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj", "o_proj"])
        torch.manual_seed(100 + i)  # A's init: the same adapters whatever ran before
        lorakit.inject(model, cfg, adapter=name)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():  # B = 0 would make every adapter the base: give it a direction
            for n, p in model.named_parameters():
                if f".{name}." in n and n.endswith(".B"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        paths[name] = lorakit.save_adapter(model, out / name, adapter=name)
    return paths


def _mood_adapter(out: Path) -> Path:
    labels = ["negative", "neutral", "positive"]
    model, _ = load_model("minilm", "classification", label_names=labels, seed=0)
    cfg = lorakit.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    lorakit.inject(model, cfg, adapter="mood")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".mood." in n and n.endswith(".B"):
                p.normal_(0, 0.05)
    return lorakit.save_adapter(
        model, out / "mood", adapter="mood", extra_files={"labels.json": labels}
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("serve")
    allowed = root / "allowed"
    paths = _lm_adapters(Path(smollm2["dir"]), allowed)
    paths["mood"] = _mood_adapter(allowed)
    broken = allowed / "broken"
    shutil.copytree(paths["spare"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    outside = root / "outside"
    shutil.copytree(paths["spare"], outside)
    cmd = [
        str(Path(sys.executable).parent / "lorakit"), "serve",
        "--model", str(smollm2["dir"]), "--served-model-name", "smollm2",
        "--adapter", f"calm={paths['calm']}", "--adapter", f"cheerful={paths['cheerful']}",
        "--classifier", "minilm", "--classifier-adapter", f"mood={paths['mood']}",
        "--adapter-dir", str(allowed), "--port", "0", "--page", str(PAGE),
        "--max-tokens-cap", "64", "--max-prompt-tokens", "300", "--max-body-bytes", "20000",
    ]  # fmt: skip
    env = {**os.environ, "LORAKIT_API_KEY": KEY, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    url, _ = wait_until_listening(proc, 180)
    try:
        yield {
            "url": url,
            "paths": paths,
            "broken": broken,
            "outside": outside,
            "dir": smollm2["dir"],
        }
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _chat(client, model, prompt, max_tokens=16, **kw):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        **kw,
    )


def test_models_lists_bases_and_adapters_with_parents(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"smollm2", "calm", "cheerful", "minilm", "mood"}
    assert models["calm"].parent == "smollm2" and models["cheerful"].parent == "smollm2"
    assert models["mood"].parent == "minilm" and models["smollm2"].parent is None


def test_adapters_differ_and_each_equals_lorakit_generate(client, served):
    replies = {
        m: _chat(client, m, PROMPTS[0]).choices[0].message.content
        for m in ("calm", "cheerful", "smollm2")
    }
    assert len(set(replies.values())) == 3, replies
    for name in ("calm", "cheerful"):
        # fp32, serve's choice on a CPU: generate's auto also times a 1-row matmul and
        # takes bf16 on some runs, which changes the tokens
        out = subprocess.run(
            [str(Path(sys.executable).parent / "lorakit"), "generate", PROMPTS[0],
             "--model", str(served["dir"]), "--adapter", str(served["paths"][name]),
             "--max-tokens", "16", "--precision", "fp32"],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        assert out.stdout.removesuffix("\n") == replies[name]


def test_chat_and_completions_stream_the_same_text_with_usage(client):
    full = _chat(client, "calm", PROMPTS[2], max_tokens=20)
    assert full.usage.completion_tokens <= 20 and full.usage.prompt_tokens > 10
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    chunks = list(_chat(client, "calm", PROMPTS[2], max_tokens=20, stream=True,
                        stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert (
        len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    )  # token by token
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[
        0
    ].finish_reason

    done = client.completions.create(
        model="cheerful", prompt="The capital of France is", max_tokens=12, temperature=0
    )
    streamed = client.completions.create(
        model="cheerful",
        prompt="The capital of France is",
        max_tokens=12,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 12


def test_stop_strings_and_seeded_sampling(client):
    base = client.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", max_tokens=20, temperature=0
    )
    text = base.choices[0].text
    assert "," in text
    cut = client.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[","]
    )
    assert cut.choices[0].text == text[: text.index(",")] and cut.choices[0].finish_reason == "stop"
    sampled = [
        client.completions.create(model="calm", prompt="Once upon a time", max_tokens=12, temperature=0.9, seed=s).choices[0].text
        for s in (3, 3, 4)
    ]  # fmt: skip
    assert sampled[0] == sampled[1] != sampled[2]


def test_a_mixed_batch_gives_each_request_its_tokens_alone(client):
    jobs = [(m, p) for p in PROMPTS for m in ("calm", "cheerful", "smollm2")]
    alone = [_chat(client, m, p).choices[0].message.content for m, p in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _chat(client, *job).choices[0].message.content, jobs))
    assert together == alone


def test_classify_per_adapter(client, served):
    http = httpx.Client(
        base_url=served["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    texts = ["I love this!", "This is terrible.", "The bus comes at noon."]
    out = http.post("/v1/classify", json={"model": "mood", "input": texts}).json()
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    for row in out["data"]:
        probs = row["probabilities"]
        assert set(probs) == {"negative", "neutral", "positive"}
        assert abs(sum(probs.values()) - 1) < 1e-4 and row["label"] == max(probs, key=probs.get)
    # same numbers as lorakit's own classify with the adapter loaded
    from lorakit.infer.classify import classify
    from lorakit.infer.load import load_for_inference

    model, tok, _, labels = load_for_inference("minilm", served["paths"]["mood"])
    local = classify(model, tok, texts, labels)
    for row, ref in zip(out["data"], local, strict=True):
        assert row["label"] == ref["label"]
        assert all(abs(row["probabilities"][k] - v) < 1e-4 for k, v in ref["probabilities"].items())
    base = http.post("/v1/classify", json={"model": "minilm", "input": texts[0]}).json()
    assert base["data"][0]["probabilities"] != out["data"][0]["probabilities"]
    assert http.post("/v1/classify", json={"model": "calm", "input": "x"}).status_code == 404


def test_load_and_unload_adapters_at_runtime(client, served):
    http = httpx.Client(
        base_url=served["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    spare = str(served["paths"]["spare"])
    # "extra" names no directory under --adapter-dir: unknown until loaded under that name
    with pytest.raises(openai.NotFoundError):
        _chat(client, "extra", PROMPTS[1])
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "extra", "lora_path": spare})
    assert r.status_code == 200, r.text
    assert "extra" in {m.id for m in client.models.list().data}
    reply = _chat(client, "extra", PROMPTS[1]).choices[0].message.content
    assert reply != _chat(client, "smollm2", PROMPTS[1]).choices[0].message.content
    assert (
        http.post(
            "/v1/load_lora_adapter", json={"lora_name": "extra", "lora_path": spare}
        ).status_code
        == 409
    )
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "extra"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _chat(client, "extra", PROMPTS[1])
    # "spare" is a directory under --adapter-dir: loaded on first use, the same reply
    assert _chat(client, "spare", PROMPTS[1]).choices[0].message.content == reply
    # a broken adapter is refused and everything keeps working
    r = http.post(
        "/v1/load_lora_adapter", json={"lora_name": "broken", "lora_path": str(served["broken"])}
    )
    assert r.status_code == 400 and "safetensors" in r.json()["error"]["message"]
    assert "broken" not in {m.id for m in client.models.list().data}
    assert _chat(client, "calm", PROMPTS[1]).choices[0].message.content


@pytest.mark.parametrize(
    "path",
    ["outside", "../outside", "/etc", "allowed/../outside"],
    ids=["sibling", "dotdot", "etc", "traversal"],
)
def test_adapter_paths_outside_the_allowed_dirs_are_refused(served, path):
    http = httpx.Client(
        base_url=served["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    allowed = served["broken"].parent
    full = {"outside": str(served["outside"]), "../outside": str(allowed / "../outside"),
            "/etc": "/etc", "allowed/../outside": str(allowed / ".." / "outside")}[path]  # fmt: skip
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": full})
    assert r.status_code == 403 and r.json()["error"]["code"] == "adapter_path_not_allowed"


def test_api_key_is_required(served):
    for key in ("wrong-key", KEY[:-1]):
        bad = openai.OpenAI(base_url=served["url"] + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    assert httpx.get(served["url"] + "/v1/models").status_code == 401
    assert httpx.get(served["url"] + "/health").json()["status"] == "ok"  # open, for probes


def test_client_errors_are_4xx_openai_json(client, served):
    with pytest.raises(openai.NotFoundError, match="nope"):
        _chat(client, "nope", "hi")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _chat(client, "calm", "hi", max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="300"):
        _chat(client, "calm", "word " * 400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="calm", messages=[], max_tokens=4)
    http = httpx.Client(
        base_url=served["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    cases = [
        ("/v1/chat/completions", b"{not json", 400),
        (
            "/v1/chat/completions",
            b'{"model": "calm", "messages": [{"role": "robot", "content": "x"}]}',
            400,
        ),
        ("/v1/completions", b'{"model": "calm", "prompt": "x", "n": 3}', 400),
        ("/v1/completions", b'{"model": "calm", "prompt": "x", "temperature": -1}', 400),
        ("/v1/completions", json.dumps({"model": "calm", "prompt": "x" * 30000}).encode(), 413),
        ("/v1/unload_lora_adapter", b'{"lora_name": "smollm2"}', 400),
        ("/v1/nothing", b"{}", 404),
    ]
    for path, body, status in cases:
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (path, body[:60], r.text)
        assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_metrics_count_requests_and_tokens(client, served):
    _chat(client, "calm", PROMPTS[3], max_tokens=5)
    text = httpx.get(served["url"] + "/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['lorakit_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert values["lorakit_generated_tokens_total"] >= 5
    assert values["lorakit_batch_size_count"] >= 5
    assert "lorakit_queue_depth" in values and values["lorakit_adapters_loaded"] >= 3


def test_the_example_chat_page_is_served_at_root(served):
    r = httpx.get(served["url"] + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    # the page drives the API it documents: classify, then the mood's adapter, streamed
    assert "/v1/classify" in page and "/v1/chat/completions" in page and "stream: true" in page


@pytest.mark.parametrize(
    "args, message",
    [
        (["--adapter", "x=/no/such/adapter"], "does not exist"),
        (["--adapter", "x"], "NAME=DIR"),
        (["--adapter-dir", "/no/such/dir"], "not a directory"),
        (["--page", "/no/such/page.html"], "not a file"),
        (["--classifier-adapter", "m=/tmp"], "needs --classifier"),
        (["--max-batch-size", "0"], "max_batch_size"),
    ],
)
def test_bad_serve_flags_are_one_line_errors(llama_model_dir, args, message, capsys):
    # in this process (main() is the console script's body); the installed script itself
    # is run by the test below
    assert main(["serve", "--model", str(llama_model_dir), "--port", "0", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_the_serve_script_exits_2_with_one_line(llama_model_dir):
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lorakit"), "serve", "--model", str(llama_model_dir), "--port", "0",
         "--adapter", "x=/no/such/adapter"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0], (
        out.stderr
    )
