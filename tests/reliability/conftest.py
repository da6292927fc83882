"""Adapters shared by the fuzz and soak tests (made once per session on the tiny Llama)."""

from __future__ import annotations

import pytest

from reliability.server_fixtures import make_adapters


@pytest.fixture(scope="session")
def tiny_adapters(llama_model_dir, tmp_path_factory):
    """{name: adapter dir} for a0..a3 (served at start) and "extra" (loaded and unloaded at
    runtime), side by side in one directory the servers allow runtime loading from."""
    out = tmp_path_factory.mktemp("tiny-adapters")
    return make_adapters(llama_model_dir, out, ["a0", "a1", "a2", "a3", "extra"])
