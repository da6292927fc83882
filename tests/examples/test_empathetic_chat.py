"""The example's tone data: real tweets of each mood as chats lorakit trains on."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from lorakit.data.detect import detect_format
from lorakit.data.load import load_table

EXAMPLE = Path(__file__).parents[2] / "examples" / "empathetic-chat"


def test_make_data_writes_a_chat_file_per_mood(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["make_data.py", str(tmp_path), "--per-mood", "12"])
    runpy.run_path(str(EXAMPLE / "make_data.py"), run_name="__main__")
    replies = runpy.run_path(str(EXAMPLE / "make_data.py"))["REPLIES"]
    for mood in ("negative", "neutral", "positive"):
        rows = [json.loads(line) for line in (tmp_path / f"{mood}.jsonl").read_text().splitlines()]
        assert len(rows) == 12
        for row in rows:
            user, bot = row["messages"]
            assert user["role"] == "user" and user["content"].strip()
            assert bot["role"] == "assistant" and bot["content"] in replies[mood]
        splits, _ = load_table(str(tmp_path / f"{mood}.jsonl"))
        assert detect_format(splits["train"]).format == "messages"


@pytest.mark.parametrize("script", ["train.sh", "serve.sh"])
def test_scripts_use_real_commands(script):
    text = (EXAMPLE / script).read_text()
    from lorakit.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    used = {line.split()[1] for line in text.splitlines() if line.strip().startswith(("lorakit ", "exec lorakit "))
            for line in [line.replace("exec ", "", 1).strip()]}  # fmt: skip
    assert used and used <= commands
