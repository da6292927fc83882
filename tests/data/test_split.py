import collections

import pytest
from datasets import Dataset

from lorakit.data.split import (
    SPLITS,
    check_fractions,
    dedupe_and_split,
    normalize_text,
    split_of,
)
from lorakit.errors import ConfigError


def test_normalize_text_collapses_space_and_case():
    assert normalize_text("  Hello\t\nWORLD  ") == "hello world"
    assert normalize_text("Straße") == "strasse"  # casefold, not lower
    assert (
        normalize_text([{"role": "user", "content": "Hi"}]) == '[{"content": "hi", "role": "user"}]'
    )


def test_split_of_is_stable_and_follows_fractions():
    keys = [f"text number {i}" for i in range(20_000)]
    first = [split_of(k) for k in keys]
    assert first == [split_of(k) for k in keys]
    counts = collections.Counter(first)
    assert abs(counts["train"] / 20_000 - 0.8) < 0.01
    assert abs(counts["validation"] / 20_000 - 0.1) < 0.01
    assert split_of("abc", seed=0) == split_of("abc", seed=0)
    moved = sum(split_of(k, seed=0) != split_of(k, seed=1) for k in keys[:1000])
    assert 200 < moved < 500  # another seed gives another split
    assert {split_of(k, (1.0, 0.0, 0.0)) for k in keys[:500]} == {"train"}
    assert {split_of(k, (0.5, 0.0, 0.5)) for k in keys[:500]} == {"train", "test"}


@pytest.mark.parametrize("bad", [(0.8, 0.1), (0.9, 0.2, 0.1), (0.0, 0.5, 0.5), (1.1, -0.1, 0.0)])
def test_check_fractions_rejects(bad):
    with pytest.raises(ConfigError, match="fractions"):
        check_fractions(bad)


def _table(rows):
    return Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})


def test_dedupe_drops_duplicates_conflicts_and_empty():
    ds = _table(
        [("Good day", "pos"), ("good   DAY ", "pos"), ("bad day", "neg"), ("Bad Day", "pos"),
         ("", "neg"), ("meh", None), ("fine", "pos"), ("okay", "neg")]
    )  # fmt: skip
    out, stats = dedupe_and_split({"train": ds}, ["text"], "label")
    kept = sorted(t for s in SPLITS for t in out[s]["text"])
    assert kept == ["Good day", "fine", "okay"]  # first occurrence kept
    assert (stats.rows, stats.empty, stats.duplicates, stats.conflicts) == (8, 2, 1, 2)
    assert sum(stats.sizes.values()) == 3
    assert (
        "8 rows read; dropped 1 duplicates, 2 with conflicting labels, 2 empty" in stats.summary()
    )


def test_split_does_not_depend_on_row_order():
    rows = [(f"tweet {i}", "pos" if i % 2 else "neg") for i in range(300)]
    a, _ = dedupe_and_split({"train": _table(rows)}, ["text"], "label")
    b, _ = dedupe_and_split({"train": _table(rows[::-1])}, ["text"], "label")
    for s in SPLITS:
        assert a[s]["text"][:] == b[s]["text"][:]  # same rows, same (hashed) order
    # a label-sorted file still gives splits whose prefixes mix the labels
    ordered = sorted(rows, key=lambda r: r[1])
    c, _ = dedupe_and_split({"train": _table(ordered)}, ["text"], "label")
    assert set(c["train"]["label"][:20]) == {"neg", "pos"}


def test_given_eval_files_win_and_missing_split_is_carved_from_train():
    train = _table([(f"t{i}", "x" if i % 2 else "y") for i in range(200)] + [("shared", "x")])
    test = _table([("SHARED", "x"), ("only test", "y"), ("only test", "y")])
    out, stats = dedupe_and_split({"train": train, "test": test}, ["text"], "label")
    assert sorted(out["test"]["text"]) == ["SHARED", "only test"]
    assert "shared" not in out["train"]["text"]
    assert 5 < len(out["validation"]) < 40  # ~1/9 of train: 0.1 / (0.8 + 0.1)
    assert len(out["train"]) + len(out["validation"]) == 200
    assert stats.duplicates == 2  # "shared" in train, the second "only test"


def test_multi_column_keys_and_unknown_parts():
    ds = Dataset.from_dict({"prompt": ["a b", "a", "a b"], "response": ["c", "b c", "c"]})
    out, stats = dedupe_and_split({"train": ds}, ["prompt", "response"], fractions=(1, 0, 0))
    assert sorted(out["train"]["prompt"]) == ["a", "a b"] and stats.duplicates == 1
    with pytest.raises(ConfigError, match="include train"):
        dedupe_and_split({"test": ds}, ["prompt"])
