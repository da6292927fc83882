"""Sources in datasets' own storage: save_to_disk directories and the local HF datasets cache."""

import json
import shutil

import datasets
import pytest
from datasets import Dataset, DatasetDict

from lorakit.config import TrainConfig
from lorakit.data.load import read_parts
from lorakit.data.prepare import prepare
from lorakit.data.stored import stored_files
from lorakit.errors import DataError

ALPACA = [{"instruction": f"Count to {i}.", "output": " ".join(map(str, range(1, i + 2)))}
          for i in range(12)]  # fmt: skip


def _lm(data):
    return TrainConfig(task="causal-lm", data=data, max_length=256)


def test_saved_dataset_directory(tmp_path, tokenizer):
    saved = tmp_path / "saved"
    Dataset.from_list(ALPACA).save_to_disk(str(saved))
    parts = read_parts(saved)
    assert list(parts) == ["train"] and parts["train"].name == "saved[train]"
    prepared = prepare(_lm(str(saved)), tokenizer)
    assert len(prepared.train) + len(prepared.validation) + len(prepared.test) == 12
    # what fingerprint.json records of it: every saved file, by relative path
    assert {"dataset_info.json", "state.json"} <= set(stored_files(str(saved)))


def test_saved_dataset_dict_keeps_its_splits(tmp_path, tokenizer):
    saved = tmp_path / "saved_dict"
    DatasetDict(
        train=Dataset.from_list(ALPACA[:8]),
        dev=Dataset.from_list(ALPACA[8:10]),  # dev counts as validation
        test=Dataset.from_list(ALPACA[10:]),
    ).save_to_disk(str(saved))
    assert sorted(read_parts(saved)) == ["test", "train", "validation"]
    prepared = prepare(_lm(str(saved)), tokenizer)
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (8, 2, 2)
    assert prepared.stats.sizes == {"train": 8, "validation": 2, "test": 2}
    assert "dataset_dict.json" in stored_files(str(saved))
    assert "train/state.json" in stored_files(str(saved))


def test_saved_dataset_dict_without_a_train_split(tmp_path):
    saved = tmp_path / "odd"
    DatasetDict(a=Dataset.from_list(ALPACA), b=Dataset.from_list(ALPACA)).save_to_disk(str(saved))
    with pytest.raises(DataError, match=r"has no train split \(splits: a, b\)"):
        read_parts(saved)


def _cache_dataset(cache, name, rows, tmp_path):
    """Write `rows` into `cache` exactly as datasets lays out a downloaded hub dataset: the
    json builder prepares them, then the directory takes the hub id's `namespace___name`."""
    from datasets.data_files import DataFilesDict
    from datasets.load import configure_builder_class
    from datasets.packaged_modules.json.json import Json, JsonConfig

    namespace, short = name.split("/")
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = DataFilesDict.from_patterns({"train": [str(source)]})
    config = JsonConfig(name="default", data_files=files)
    builder = configure_builder_class(
        Json, builder_configs=[config], default_config_name="default", dataset_name=short
    )(cache_dir=str(cache), hash="0123abcd", dataset_name=short)
    builder.download_and_prepare()
    shutil.move(cache / short, cache / f"{namespace}___{short}")


def test_dataset_from_the_local_hf_cache_offline(tmp_path, tokenizer, monkeypatch):
    cache = tmp_path / "hf-datasets"
    _cache_dataset(cache, "lorakit-test/tiny_alpaca", ALPACA, tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    offline_before = datasets.config.HF_HUB_OFFLINE
    prepared = prepare(_lm("lorakit-test/tiny_alpaca"), tokenizer)
    assert len(prepared.train) + len(prepared.validation) + len(prepared.test) == 12
    assert offline_before == datasets.config.HF_HUB_OFFLINE  # offline for our call only
    assert list(stored_files("lorakit-test/tiny_alpaca")) == [
        "lorakit-test/tiny_alpaca/tiny_alpaca-train.arrow"
    ]


def test_a_name_not_in_the_cache(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError) as info:
        prepare(_lm("someone/not-here"), tokenizer)
    message = str(info.value)
    assert "\n" not in message
    assert "'someone/not-here' is not a file, a directory or a dataset in the local HF" in message
    # datasets' builder names are no dataset names (`load_dataset("json")` reads the cwd)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.jsonl").write_text('{"text": "not data"}\n')
    with pytest.raises(DataError, match="'json' is not a file, a directory or a dataset"):
        prepare(_lm("json"), tokenizer)
    # a missing file keeps its own error
    with pytest.raises(DataError, match=r"data file .*nope\.jsonl not found"):
        prepare(_lm(str(tmp_path / "nope.jsonl")), tokenizer)
