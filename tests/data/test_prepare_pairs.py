"""prepare() for the preference objectives: the pairs, encoded, in the splits supervised
training on the same file puts their prompt + chosen in (so an SFT adapter never saw the
pairs DPO is scored on), every pair kept, and non-preference data refused."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from lorakit.config import TrainConfig
from lorakit.data import dedupe_and_split
from lorakit.data.prepare import prepare
from lorakit.errors import DataError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prefs(n=120):
    rows = [{"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(n)]
    # a second rejected answer for the same prompt + chosen: a pair of its own
    rows += [
        {"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"never {i}"} for i in range(40)
    ]
    return rows


def _config(path, objective="dpo", **kw):
    return TrainConfig(task="causal-lm", data=str(path), objective=objective, **kw)


def test_pairs_land_where_sft_puts_their_prompt_and_chosen(tmp_path, tokenizer):
    path = _write(tmp_path / "prefs.jsonl", _prefs())
    sft = prepare(_config(path, "sft"), tokenizer)
    dpo = prepare(_config(path), tokenizer)
    assert sft.pairs is None  # sft needs none unless asked (lorakit eval)
    for split in ("train", "validation", "test"):
        prompts = set(sft.raw[split]["prompt"])
        assert set(dpo.raw[split]["prompt"]) == prompts
        # every pair kept: the 40 second answers too, beside their first
        doubled = sum(int(p.removeprefix("Q").removesuffix("?")) < 40 for p in prompts)
        assert len(dpo.pairs[split]) == len(prompts) + doubled
        assert len(sft.raw[split]) == len(prompts)  # SFT: one row per prompt + chosen
    assert sum(len(dpo.pairs[s]) for s in ("train", "validation", "test")) == 160
    assert len(dpo.pairs["test"]) > 0 and len(dpo.pairs["validation"]) > 0
    row = dpo.pairs["train"][0]
    # chosen and rejected share their prompt's tokens, masked; the answers carry labels
    n = next(i for i, t in enumerate(row["chosen_labels"]) if t != -100)
    assert row["chosen_input_ids"][:n] == row["rejected_input_ids"][:n]
    assert all(t == -100 for t in row["rejected_labels"][:n])
    assert row["chosen_input_ids"] != row["rejected_input_ids"]


def test_limits_apply_to_the_pairs(tmp_path, tokenizer):
    path = _write(tmp_path / "prefs.jsonl", _prefs())
    dpo = prepare(_config(path, max_train_samples=7, max_eval_samples=3), tokenizer)
    assert len(dpo.pairs["train"]) == len(dpo.train) == 7
    assert len(dpo.pairs["test"]) == len(dpo.test) == 3


def test_eval_gets_pairs_only_from_preference_data(tmp_path, tokenizer):
    prefs = _write(tmp_path / "prefs.jsonl", _prefs(20))
    qa = _write(tmp_path / "qa.jsonl", [{"prompt": f"Q{i}", "response": "A"} for i in range(20)])
    assert prepare(_config(prefs, "sft"), tokenizer, pairs_if_present=True).pairs is not None
    assert prepare(_config(qa, "sft"), tokenizer, pairs_if_present=True).pairs is None
    with pytest.raises(DataError, match="holds the prompt-response format"):
        prepare(_config(qa), tokenizer)


def test_split_columns_decide_the_split_and_key_columns_the_duplicates():
    rows = {"a": [f"x{i}" for i in range(50)] * 2, "b": ["1"] * 50 + ["2"] * 50}
    table = Dataset.from_dict({**rows, "c": rows["b"]})
    whole, _ = dedupe_and_split({"train": table}, ["a", "b"], split_columns=["a"])
    on_a, _ = dedupe_and_split({"train": table}, ["a"])
    assert sum(len(whole[s]) for s in whole) == 100  # (a, b) pairs are all distinct
    for split in ("train", "validation", "test"):
        # each `a` sits in the split `a` alone gives it, with both of its b's
        assert set(whole[split]["a"]) == set(on_a[split]["a"])
        assert len(whole[split]) == 2 * len(on_a[split])
