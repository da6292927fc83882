"""From a TrainConfig to tokenized train / validation / test sets (and label names)."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from lorakit.config import TrainConfig
from lorakit.data.formats import (
    detect_lm_format,
    encode_chat,
    encode_classification,
    encode_prompt_response,
    encode_text,
    label_names,
    tweets_as_chat,
)
from lorakit.data.load import load_table
from lorakit.data.split import SplitStats
from lorakit.data.tweets import LABEL_COLUMN as TWEETS_LABEL
from lorakit.data.tweets import TEXT_COLUMN as TWEETS_TEXT


@dataclass
class Prepared:
    train: Dataset  # input_ids, labels
    validation: Dataset
    test: Dataset
    labels: list[str] | None  # class names (classification)
    stats: SplitStats
    raw: dict  # the untokenized splits (for generation-based metrics)


def columns(config: TrainConfig) -> tuple[str, str]:
    """(text column, label column), with the tweets defaults."""
    default_text, default_label = ("text", "label")
    if config.data == "tweets":
        default_text, default_label = TWEETS_TEXT, TWEETS_LABEL
    return config.text_column or default_text, config.label_column or default_label


def _limit(ds: Dataset, n: int | None) -> Dataset:
    # The splits are already in hashed (random-like) order, so the first n are a fair sample.
    return ds.select(range(min(n, len(ds)))) if n else ds


def prepare(config: TrainConfig, tokenizer) -> Prepared:
    text_col, label_col = columns(config)
    if config.task == "classification":
        splits, stats = load_table(
            config.data,
            key_columns=[text_col],
            label_column=label_col,
            encoding=config.encoding,
            seed=0,
        )
        names = label_names(splits, label_col)
        raw = _limited(splits, config)
        enc = {
            k: encode_classification(
                v,
                tokenizer,
                names,
                text_column=text_col,
                label_column=label_col,
                max_length=config.max_length,
            )
            for k, v in raw.items()
        }
        return Prepared(enc["train"], enc["validation"], enc["test"], names, stats, raw)

    if config.data == "tweets":  # the demo's instruction task: answer with the sentiment word
        splits, stats = load_table(
            "tweets", key_columns=[TWEETS_TEXT], label_column=TWEETS_LABEL, seed=0
        )
        raw = _limited(splits, config)
        chats = {k: tweets_as_chat(v) for k, v in raw.items()}
        enc = {k: encode_chat(v, tokenizer, max_length=config.max_length) for k, v in chats.items()}
        return Prepared(enc["train"], enc["validation"], enc["test"], None, stats, chats)

    splits, stats = load_table(config.data, encoding=config.encoding, seed=0)
    raw = _limited(splits, config)
    fmt = detect_lm_format(raw["train"].column_names)
    if fmt == "chat":
        enc = {k: encode_chat(v, tokenizer, max_length=config.max_length) for k, v in raw.items()}
    elif fmt == "prompt-response":
        enc = {
            k: encode_prompt_response(
                v,
                tokenizer,
                max_length=config.max_length,
                use_chat_template=bool(tokenizer.chat_template),
            )
            for k, v in raw.items()
        }
    else:
        enc = {k: encode_text(v, tokenizer, max_length=config.max_length) for k, v in raw.items()}
    return Prepared(enc["train"], enc["validation"], enc["test"], None, stats, raw)


def _limited(splits, config: TrainConfig) -> dict[str, Dataset]:
    return {
        "train": _limit(splits["train"], config.max_train_samples),
        "validation": _limit(splits["validation"], config.max_eval_samples),
        "test": _limit(splits["test"], config.max_eval_samples),
    }
