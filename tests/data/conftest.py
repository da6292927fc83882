"""Fixtures for the data tests: the tiny tokenizer, tiny Llama, and the real MiniLM and
SmolLM2 tokenizers."""

from __future__ import annotations

import pytest

from tiny_tokenizer import make_tokenizer as _make_tokenizer
from tiny_tokenizer import tiny_llama as _tiny_llama


@pytest.fixture(scope="session")
def make_tokenizer():
    return _make_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return _make_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama():
    return _tiny_llama


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from lorakit.models.paths import alias_path

    return AutoTokenizer.from_pretrained(alias_path("minilm"), local_files_only=True)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template), from the session's
    conversion of the packaged GGUF."""
    from lorakit.models.load import load_tokenizer

    return load_tokenizer(smollm2["dir"])
