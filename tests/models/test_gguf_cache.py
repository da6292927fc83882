import json
import os
import shutil
import time

import pytest
import torch

from lorakit.errors import ModelNotFoundError
from lorakit.models import gguf_cache
from lorakit.models.gguf_cache import cache_key, cached_gguf_dir
from lorakit.models.load import load_model
from tiny_tokenizer import make_tokenizer, tiny_llama


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A .gguf file whose 'loading' gives a tiny tied Llama marked quantized, like a real one."""
    path = tmp_path / "Tiny.Q4.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 16)
    calls = []

    def load(p):
        calls.append(p)
        model = tiny_llama(tie=True)
        model.config.quantization_config = {"quant_method": "gguf", "gguf_file": p.name}
        return model, make_tokenizer()

    monkeypatch.setattr(gguf_cache, "load_gguf", load)
    return path, calls


def test_cache_key_is_content_based(tmp_path):
    a = tmp_path / "m.gguf"
    a.write_bytes(b"x" * 3_000_000)
    key = cache_key(a)
    assert key.startswith("m-") and len(key) == len("m-") + 12
    (tmp_path / "copy").mkdir()
    b = shutil.copy(a, tmp_path / "copy" / "m.gguf")
    os.utime(b, (0, 0))
    assert cache_key(b) == key  # reinstalling the same file: same entry
    with open(b, "r+b") as f:
        f.seek(2_999_000)
        f.write(b"y")  # weights near the end differ
    assert cache_key(b) != key


def test_converts_once_to_a_plain_directory(fake_gguf, empty_cache):
    path, calls = fake_gguf
    directory = cached_gguf_dir(path)
    assert directory == empty_cache / "models" / cache_key(path)
    assert {p.name for p in directory.iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"
    }  # fmt: skip
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert cached_gguf_dir(path) == directory and len(calls) == 1
    model, tokenizer = load_model(path, "causal-lm")
    assert len(calls) == 1
    assert getattr(model, "hf_quantizer", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    expected = tiny_llama(tie=True)
    torch.testing.assert_close(model.state_dict(), expected.state_dict(), atol=0, rtol=0)
    assert tokenizer.chat_template is not None
    assert [p.name for p in (empty_cache / "models").iterdir()] == [directory.name]  # no temp left


def test_failed_conversion_leaves_nothing(fake_gguf, empty_cache, monkeypatch):
    path, _ = fake_gguf

    def broken(model, tokenizer, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(gguf_cache, "save_plain", broken)
    with pytest.raises(KeyboardInterrupt):
        cached_gguf_dir(path)
    assert list((empty_cache / "models").iterdir()) == []


def test_incomplete_entry_is_rebuilt_and_stale_temp_removed(fake_gguf, empty_cache):
    path, calls = fake_gguf
    target = empty_cache / "models" / cache_key(path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # someone deleted the weights by hand
    stale = empty_cache / "models" / ".old.abc.tmp"
    stale.mkdir()
    os.utime(stale, (time.time() - 3 * 86400,) * 2)
    assert cached_gguf_dir(path) == target
    assert (target / "model.safetensors").is_file() and len(calls) == 1
    assert not stale.exists()


def test_a_concurrent_conversion_that_finished_first_wins(fake_gguf, monkeypatch):
    path, _ = fake_gguf
    real_save = gguf_cache.save_plain

    def save_and_race(model, tokenizer, out_dir):
        real_save(model, tokenizer, out_dir)
        other = out_dir.parent / cache_key(path)
        real_save(model, tokenizer, other)  # another process publishes meanwhile
        (other / "marker").write_text("first")

    monkeypatch.setattr(gguf_cache, "save_plain", save_and_race)
    directory = cached_gguf_dir(path)
    assert (directory / "marker").read_text() == "first"
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file .*nope.gguf not found"):
        cached_gguf_dir(tmp_path / "nope.gguf")


@pytest.mark.slow
def test_real_smollm2_cache_gives_identical_logits(smollm2, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(smollm2["root"]))
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", "causal-lm")
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2: first conversion {smollm2['seconds']:.1f} s, cached load {seconds:.1f} s")
    assert seconds < 15  # ~1 s warm; generous for a loaded CI machine
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not hasattr(model.config, "quantization_config")
    with torch.no_grad():
        logits = model(input_ids=smollm2["ids"]).logits
    assert torch.equal(logits, smollm2["logits"])
    assert tokenizer.chat_template == smollm2["chat_template"]
    assert "<|im_start|>assistant" in tokenizer.chat_template
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.padding_side == "left"
