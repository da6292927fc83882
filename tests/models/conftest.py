"""Fixtures for the model tests: an empty lorakit cache per test, tiny model directories, and
(slow) the real SmolLM2 converted once per test session."""

from __future__ import annotations

import time

import pytest
import torch

from tiny_tokenizer import make_tokenizer, tiny_llama


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Every test starts from an empty lorakit cache; nothing touches ~/.cache/lorakit."""
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "lorakit-cache"))
    return tmp_path / "lorakit-cache"


@pytest.fixture
def llama_dir(tmp_path):
    """A tiny Llama + byte tokenizer (no pad token) saved as an HF directory."""
    path = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


PROBE = [{"role": "user", "content": "Is a self-driving car safe?"}]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """Convert the real SmolLM2 GGUF into a fresh session cache, keeping the GGUF-loaded
    model's logits on a probe chat to compare the cached copy against."""
    from lorakit.models import gguf_cache
    from lorakit.models.paths import alias_path

    root = tmp_path_factory.mktemp("smollm2-cache")
    loaded = {}
    real_load = gguf_cache.load_gguf

    def spy(path):
        loaded["model"], loaded["tokenizer"] = real_load(path)
        return loaded["model"], loaded["tokenizer"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAKIT_CACHE", str(root))
        mp.setattr(gguf_cache, "load_gguf", spy)
        start = time.perf_counter()
        directory = gguf_cache.cached_gguf_dir(alias_path("smollm2-135m"))
        seconds = time.perf_counter() - start
    model, tokenizer = loaded.pop("model"), loaded.pop("tokenizer")
    ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return {
        "root": root,
        "dir": directory,
        "seconds": seconds,
        "ids": ids,
        "logits": logits,
        "chat_template": tokenizer.chat_template,
    }
