import json

import pandas as pd
import pytest

from lorakit.data.load import find_split_files, load_table, read_file
from lorakit.data.split import SPLITS
from lorakit.errors import DataError

ROWS = [{"text": f"example text {i}", "label": ["neg", "pos", "neu"][i % 3]} for i in range(60)]


def _write(path, rows=ROWS, fmt=None):
    fmt = fmt or path.suffix
    if fmt == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == ".tsv":
        pd.DataFrame(rows).to_csv(path, index=False, sep="\t")
    elif fmt == ".json":
        path.write_text(json.dumps(rows))
    elif fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_read_every_format(tmp_path, ext):
    ds = read_file(_write(tmp_path / f"data{ext}"))
    assert ds["text"] == [r["text"] for r in ROWS]
    assert ds["label"] == [r["label"] for r in ROWS]


def test_one_file_is_split_like_tweets(tmp_path):
    path = _write(tmp_path / "data.csv", ROWS + ROWS[:5])
    out, stats = load_table(path, label_column="label")
    assert stats.rows == 65 and stats.duplicates == 5
    assert sum(stats.sizes.values()) == 60
    texts = [set(out[s]["text"]) for s in SPLITS]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    again, _ = load_table(path, label_column="label")
    assert all(again[s]["text"] == out[s]["text"] for s in SPLITS)


def test_chat_jsonl_keeps_message_lists(tmp_path):
    chats = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(10)
    ]
    out, stats = load_table(_write(tmp_path / "chat.jsonl", chats), fractions=(1, 0, 0))
    assert len(out["train"]) == 10 and stats.duplicates == 0
    firsts = [m[0] for m in out["train"]["messages"]]
    assert sorted(firsts, key=lambda m: m["content"]) == [
        {"role": "user", "content": f"q{i}"} for i in range(10)
    ]


def test_directory_of_split_files(tmp_path):
    _write(tmp_path / "train.jsonl", ROWS[:50])
    _write(tmp_path / "dev.jsonl", ROWS[50:55])
    _write(tmp_path / "test.jsonl", ROWS[55:] + ROWS[:2])  # two test texts also in train
    assert find_split_files(tmp_path) == {
        "train": tmp_path / "train.jsonl", "validation": tmp_path / "dev.jsonl",
        "test": tmp_path / "test.jsonl",
    }  # fmt: skip
    out, stats = load_table(tmp_path, label_column="label")
    assert sorted(out["validation"]["text"]) == sorted(r["text"] for r in ROWS[50:55])
    assert sorted(out["test"]["text"]) == sorted(r["text"] for r in ROWS[55:] + ROWS[:2])
    assert len(out["train"]) == 48 and stats.duplicates == 2


def test_mapping_of_files_and_single_file_directory(tmp_path):
    train, test = _write(tmp_path / "a.csv", ROWS[:40]), _write(tmp_path / "b.csv", ROWS[40:])
    out, _ = load_table({"train": train, "test": test}, label_column="label")
    assert len(out["test"]) == 20 and len(out["train"]) + len(out["validation"]) == 40
    only = tmp_path / "only"
    only.mkdir()
    _write(only / "mine.parquet")
    assert find_split_files(only) == {"train": only / "mine.parquet"}


def test_tweets_by_name():
    out, stats = load_table("tweets", key_columns=["text"], label_column="sentiment")
    assert stats.sizes["train"] == len(out["train"]) == 29_735
    with pytest.raises(
        DataError, match="no column 'label' — available columns: sentiment, confidence, text"
    ):
        load_table("tweets", label_column="label")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="nope.csv not found — check the path"):
        read_file(tmp_path / "nope.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown data format '.xlsx' — use one of .csv, .tsv"):
        read_file(tmp_path / "data.xlsx")
    with pytest.raises(DataError, match="has no train file"):
        find_split_files(tmp_path)


def test_undecodable_text_names_the_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncafé,pos\nthé,neg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid utf-8 text .* `--encoding latin-1`"):
        read_file(path)
    assert read_file(path, encoding="latin-1")["text"] == ["café", "thé"]
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        read_file(path, encoding="klingon")


def test_unknown_column_lists_available(tmp_path):
    path = _write(tmp_path / "data.csv")
    with pytest.raises(DataError, match="no column 'sentence' — available columns: text, label"):
        load_table(path, key_columns=["sentence"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty"),
        ("blank.jsonl", "\n\n", "is empty"),
        ("header.csv", "text,label\n", "has no rows"),
        ("bad.jsonl", '{"text": "a"\n', "could not parse .* as JSON"),
    ],
)
def test_empty_and_malformed(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_file(tmp_path / name)


def test_single_class_and_all_duplicates(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(10)]
    with pytest.raises(
        DataError, match="only 'pos' in column 'label' — classification needs at least two"
    ):
        load_table(_write(tmp_path / "one.csv", rows), label_column="label")
    blank = [{"text": " ", "label": "pos"}, {"text": "", "label": "neg"}]
    with pytest.raises(DataError, match="no training rows left"):
        load_table(_write(tmp_path / "blank.jsonl", blank), label_column="label")
