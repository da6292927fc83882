"""Several data sources mixed: counts per source, seeded draws, and the config rules."""

import json
from collections import Counter

import pandas as pd
import pytest

from lorakit.config import TrainConfig
from lorakit.data.formats import IGNORE
from lorakit.data.mix import counts, pick, shares
from lorakit.data.prepare import prepare
from lorakit.errors import ConfigError
from lorakit.yaml_config import resolve_config


def test_shares_sum_to_the_total():
    assert shares(10, [1, 1, 1]) == [4, 3, 3]  # the largest remainder, then the first, wins
    assert shares(7, [2, 5]) == [2, 5]
    assert shares(5, [0.1, 0.3]) == [1, 4]  # 1.25 / 3.75
    assert counts([29, 15], None, None) == [29, 15]  # no weights: every row once
    assert counts([30, 10], None, 8) == [6, 2]  # a limit keeps the sources' proportions
    assert counts([29, 15], [1, 3], None) == [11, 33]  # as many rows as all sources, shared
    assert counts([29, 15], [1, 3], 8) == [2, 6]


def test_pick_is_a_prefix_or_a_seeded_shuffle_repeated():
    assert pick(10, 3) == [0, 1, 2]  # splits are in hashed order already
    drawn = pick(4, 10, seed="0/1")
    # two whole passes over a shuffle, then the first two rows of it again
    assert sorted(drawn[:4]) == [0, 1, 2, 3] and drawn[4:8] == drawn[:4] == drawn[8:] + drawn[2:4]
    assert sorted(Counter(drawn).values()) == [2, 2, 3, 3]
    assert drawn == pick(4, 10, seed="0/1")
    assert pick(50, 50, seed="0/1") != pick(50, 50, seed="1/1")
    assert pick(0, 5) == [] and pick(5, 0) == []


def _sources(tmp_path):
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(
        json.dumps({"instruction": f"Task {i}", "output": f"alpaca {i}"}) + "\n" for i in range(30)
    ))  # fmt: skip
    qa = tmp_path / "qa.parquet"
    pd.DataFrame({"prompt": [f"Q{i}" for i in range(10)],
                  "response": [f"qa {i}" for i in range(10)]}).to_parquet(qa)  # fmt: skip
    return [str(alpaca), str(qa)]


def _answers(tokenizer, ds):
    return [
        tokenizer.decode(
            [t for t, y in zip(e["input_ids"], e["labels"], strict=True) if y != IGNORE]
        )
        for e in ds
    ]


def test_two_sources_mixed_with_weights(tmp_path, tokenizer):
    data = _sources(tmp_path)
    plain = prepare(TrainConfig(task="causal-lm", data=data, max_length=256), tokenizer)
    answers = _answers(tokenizer, plain.train)
    n_alpaca = sum(a.startswith("alpaca") for a in answers)
    n_qa = sum(a.startswith("qa") for a in answers)
    assert n_alpaca + n_qa == len(answers) == plain.stats.sizes["train"]
    assert plain.stats.rows == 40
    assert len(plain.validation) == plain.stats.sizes["validation"]

    # weights 1:3 share the same number of training rows: the small source repeats
    config = TrainConfig(task="causal-lm", data=data, data_weights=[1, 3], max_length=256)
    mixed = prepare(config, tokenizer)
    answers = _answers(tokenizer, mixed.train)
    expected = shares(n_alpaca + n_qa, [1, 3])
    assert [sum(a.startswith(p) for a in answers) for p in ("alpaca", "qa")] == expected
    qa_rows = [a for a in answers if a.startswith("qa")]
    assert len(set(qa_rows)) == n_qa  # every qa row, some of them more than once
    # evaluation splits are not reweighted
    assert len(mixed.validation) == len(plain.validation) and len(mixed.test) == len(plain.test)
    # deterministic for a seed; another seed draws other alpaca rows, in the same numbers
    assert _answers(tokenizer, prepare(config, tokenizer).train) == answers
    other = _answers(tokenizer, prepare(config.model_copy(update={"seed": 1}), tokenizer).train)
    assert sorted(other) != sorted(answers)
    assert sum(a.startswith("alpaca") for a in other) == expected[0]


def test_data_in_yaml_is_one_string_or_a_list(tmp_path):
    (tmp_path / "one.yaml").write_text("data: a.jsonl\n")
    (tmp_path / "two.yaml").write_text("data: [a.jsonl, b.jsonl]\ndata_weights: [1, 2]\n")
    one = resolve_config(TrainConfig, tmp_path / "one.yaml", {})
    assert one.data == ["a.jsonl"] and one.model_dump(mode="json")["data"] == "a.jsonl"
    two = resolve_config(TrainConfig, tmp_path / "two.yaml", {})
    assert two.data == ["a.jsonl", "b.jsonl"] and two.data_weights == [1.0, 2.0]


def test_weights_must_match_the_sources():
    with pytest.raises(ConfigError) as info:
        TrainConfig(data=["a.jsonl", "b.jsonl"], data_weights=[1, 2, 3])
    assert "\n" not in str(info.value)
    assert "3 data_weights for 2 data sources" in str(info.value)
    with pytest.raises(ConfigError, match="data weights must be > 0"):
        TrainConfig(data=["a.jsonl", "b.jsonl"], data_weights=[1, 0])
