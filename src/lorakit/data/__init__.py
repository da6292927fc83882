"""Data: loading (via `datasets`), the default `tweets`, task formats and their detection,
preference pairs, mixing several sources, batching and packing."""

from lorakit.data.batching import (
    block_causal_mask,
    collate,
    collate_packed,
    length_grouped_batches,
    lengths_of,
    make_collate,
    pack,
)
from lorakit.data.detect import Detected, detect_format
from lorakit.data.formats import (
    IGNORE,
    chat_example,
    encode_chat,
    encode_classification,
    encode_prompt_response,
    encode_text,
    label_names,
    tweet_messages,
    tweet_prompt,
    tweets_as_chat,
)
from lorakit.data.load import check_classes, check_columns, load_table, read_file, read_parts
from lorakit.data.preference import PreferenceExample, encode_preference, preference_examples
from lorakit.data.split import SPLITS, SplitStats, dedupe_and_split, split_of
from lorakit.data.tweets import load_tweets

__all__ = [
    "IGNORE",
    "SPLITS",
    "Detected",
    "PreferenceExample",
    "SplitStats",
    "block_causal_mask",
    "chat_example",
    "check_classes",
    "check_columns",
    "collate",
    "collate_packed",
    "dedupe_and_split",
    "detect_format",
    "encode_chat",
    "encode_classification",
    "encode_preference",
    "encode_prompt_response",
    "encode_text",
    "label_names",
    "length_grouped_batches",
    "lengths_of",
    "load_table",
    "load_tweets",
    "make_collate",
    "pack",
    "preference_examples",
    "read_file",
    "read_parts",
    "split_of",
    "tweet_messages",
    "tweet_prompt",
    "tweets_as_chat",
]
