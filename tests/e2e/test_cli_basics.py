"""The installed `lorakit` command: one-line errors with exit code 2, JSON output on success."""

import json
import subprocess
import sys

import lorakit
from tiny_models import tiny_llama


def _run(*args):
    cmd = [sys.executable, "-m", "lorakit.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_inspect_summarises_an_adapter(tmp_path):
    model = lorakit.inject(
        tiny_llama(), lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    path = lorakit.save_adapter(model, tmp_path / "a")
    out = _run("inspect", str(path))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["adapted_modules"] == 4 and summary["ranks"] == [4]
    assert summary["parameters"] == 2 * (4 * 32 + 32 * 4) + 2 * (4 * 32 + 16 * 4)


def test_user_error_is_one_line_and_exit_2(tmp_path):
    out = _run("inspect", str(tmp_path / "missing"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: adapter directory") and "—" in lines[0]
    assert "Traceback" not in out.stderr


def test_debug_shows_traceback(tmp_path):
    out = _run("--debug", "inspect", str(tmp_path / "missing"))
    assert out.returncode != 0 and "Traceback" in out.stderr
