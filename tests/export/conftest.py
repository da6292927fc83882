"""Fixtures of the export tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (byte-level BPE, 49,152 tokens), from the packaged GGUF."""
    from lorakit.models.load import load_tokenizer, model_dir, resolve_model

    return load_tokenizer(model_dir(resolve_model("smollm2-135m")))
