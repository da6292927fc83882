"""Fixtures for the model tests: an empty lorakit cache per test, tiny model directories, and
(slow) the real SmolLM2 converted once per test session."""

from __future__ import annotations

import pytest

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
