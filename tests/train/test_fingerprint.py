"""fingerprint.json and config.json stay as they were for one data source (old runs resume),
and name every file of several sources."""

import json

import pytest

from lorakit.config import TrainConfig
from lorakit.errors import ConfigError
from lorakit.train import fingerprint
from lorakit.train.output_dir import check_output, protected_paths


def test_one_source_is_recorded_as_before(tmp_path, sentiment_csv):
    # a config.json written before `data` could be a list: the value is a plain string
    old = TrainConfig(data=str(sentiment_csv)).model_dump(mode="json")
    assert old["data"] == str(sentiment_csv)
    assert TrainConfig(**old).model_dump(mode="json") == old
    assert fingerprint.data_files(str(sentiment_csv)) == {"reviews.csv": sentiment_csv}
    assert fingerprint.data_files([str(sentiment_csv)]) == {"reviews.csv": sentiment_csv}
    assert fingerprint.data_files("tweets").keys() == {"tweets"}


def test_an_old_run_resumes_with_the_same_string(tmp_path, sentiment_csv):
    data = tmp_path / "reviews.csv"
    data.write_bytes(sentiment_csv.read_bytes())
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(data=str(data), output=str(out), resume=True)
    (out / "config.json").write_text(json.dumps(config.model_dump(mode="json") | {"resume": False}))
    # what an old run recorded (its data half only: a missing key is not checked)
    (out / fingerprint.FILE).write_text(
        json.dumps({"data": {"reviews.csv": fingerprint.file_fingerprint(data)}})
    )
    assert check_output(config) == out  # same config, same data
    data.write_text(data.read_text() + "more,pos\n")
    with pytest.raises(ConfigError, match=r"the training data changed .*reviews\.csv differs"):
        check_output(config)


def test_several_sources_are_named_by_position(tmp_path, sentiment_csv, qa_jsonl):
    files = fingerprint.data_files([str(sentiment_csv), str(qa_jsonl)])
    assert files == {"0:reviews.csv": sentiment_csv, "1:qa.jsonl": qa_jsonl}
    config = TrainConfig(task="causal-lm", data=[str(sentiment_csv), str(qa_jsonl)])
    assert config.model_dump(mode="json")["data"] == [str(sentiment_csv), str(qa_jsonl)]
    protected = protected_paths(config)
    assert protected[f"the training data ({qa_jsonl})"] == qa_jsonl
