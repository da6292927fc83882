"""The tweets-dpo example's data: valid preference pairs (the right mood chosen, a wrong one
rejected) and the same tweets as prompt / response, in the tweets' own splits."""

import json
import runpy
from pathlib import Path

import pytest

from lorakit.data.detect import detect_format
from lorakit.data.formats import tweet_prompt
from lorakit.data.load import load_table
from lorakit.data.preference import preference_examples
from lorakit.data.tweets import LABELS

EXAMPLE = Path(__file__).parents[2] / "examples" / "tweets-dpo"


@pytest.fixture(scope="module")
def builder():
    return runpy.run_path(str(EXAMPLE / "make_data.py"))


def test_pairs_name_the_right_mood_as_chosen(builder):
    moods = [LABELS[i % 3] for i in range(30)]
    rows = builder["pairs_of"]([f"tweet {i}" for i in range(30)], moods, seed=0)
    assert len(rows) == 30
    for i, (row, mood) in enumerate(zip(rows, moods, strict=True)):
        assert row["prompt"] == tweet_prompt(f"tweet {i}")
        assert row["chosen"] == mood and row["rejected"] in LABELS and row["rejected"] != mood
    # both wrong moods are used, and the choice is seeded
    assert len({(r["chosen"], r["rejected"]) for r in rows}) == 6
    assert rows == builder["pairs_of"]([f"tweet {i}" for i in range(30)], moods, seed=0)


def test_build_writes_both_forms_in_the_tweets_splits(builder, tmp_path):
    sizes = builder["build"](tmp_path, train=12, eval_rows=5)
    assert sizes == {"train": 12, "validation": 5, "test": 5}
    prefs, _ = load_table(str(tmp_path / "prefs"))
    sft, _ = load_table(str(tmp_path / "sft"))
    assert detect_format(prefs["train"]).format == "preference"
    assert detect_format(sft["train"]).format == "prompt-response"
    prompts = {}
    for split, n in sizes.items():
        assert len(prefs[split]) == len(sft[split]) == n  # nothing dropped as a duplicate
        examples = preference_examples(prefs[split], "prompt", "chosen", "rejected", split)
        assert all(e.chosen in LABELS and e.rejected in LABELS for e in examples)
        assert all(e.chosen != e.rejected for e in examples)
        prompts[split] = set(prefs[split]["prompt"])
        assert prompts[split] == set(sft[split]["prompt"])
        # the SFT form answers with the chosen mood
        chosen = {e.prompt: e.chosen for e in examples}
        lines = (tmp_path / "sft" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(x)["response"] for x in lines] == [
            chosen[json.loads(x)["prompt"]] for x in lines
        ]
    assert not prompts["train"] & (prompts["validation"] | prompts["test"])


def test_run_script_uses_real_commands():
    from lorakit.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    lines = [x.strip() for x in (EXAMPLE / "run.sh").read_text().splitlines()]
    used = {x.split()[1] for x in lines if x.startswith("lorakit ")}
    assert used == {"train", "eval"} and used <= commands
