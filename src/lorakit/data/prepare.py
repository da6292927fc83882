"""From a TrainConfig to tokenized train / validation / test sets (and label names).

Each data source is read, brought to its format's canonical form (lorakit.data.convert) and
split on its own; the sources are then mixed (lorakit.data.mix) and each one's rows are
tokenized by the encoder of its own form, so a ShareGPT file and an Alpaca file train together.
Preference data also keeps each pair (PAIR_COLUMN) beside its supervised form (prompt +
chosen), split where supervised training on the file puts it, and encoded as pairs for the
dpo / orpo objectives (and `lorakit eval`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, concatenate_datasets

from lorakit.config import DATA_COLUMNS, TrainConfig
from lorakit.data.convert import form_of, to_form
from lorakit.data.detect import detect_format
from lorakit.data.formats import (
    encode_chat,
    encode_classification,
    encode_prompt_response,
    encode_text,
    label_names,
    tweets_as_chat,
)
from lorakit.data.load import Part, load_table, read_parts, split_parts
from lorakit.data.mix import counts, pick
from lorakit.data.preference import (
    PAIR_COLUMN,
    empty_pairs,
    encode_preference,
    examples_of,
    pair_column,
    preference_examples,
)
from lorakit.data.split import SPLITS, SplitStats, column
from lorakit.data.tweets import LABEL_COLUMN as TWEETS_LABEL
from lorakit.data.tweets import TEXT_COLUMN as TWEETS_TEXT
from lorakit.errors import ConfigError, DataError


@dataclass
class Prepared:
    train: Dataset  # input_ids, labels
    validation: Dataset
    test: Dataset
    labels: list[str] | None  # class names (classification)
    stats: SplitStats
    raw: dict  # the untokenized splits (for generation-based metrics)
    # preference pairs per split (chosen/rejected input ids and labels): for the dpo / orpo
    # objectives, or asked for with pairs_if_present; else None
    pairs: dict[str, Dataset] | None = None


@dataclass
class _Source:
    """One data source, read, converted and split."""

    splits: DatasetDict
    stats: SplitStats
    form: str  # classification, text, prompt-response or messages
    columns: tuple[str, str] = ("text", "label")  # classification: (text, label)
    finish: Callable[[Dataset], Dataset] | None = None  # applied to the rows picked
    pairs: bool = False  # the splits carry PAIR_COLUMN


def columns(config: TrainConfig, source: str | None = None) -> tuple[str, str]:
    """(text column, label column) of a source (default: the first), with the tweets defaults."""
    default_text, default_label = ("text", "label")
    if (source or config.data[0]) == "tweets":
        default_text, default_label = TWEETS_TEXT, TWEETS_LABEL
    return config.text_column or default_text, config.label_column or default_label


def prepare(config: TrainConfig, tokenizer, *, pairs_if_present: bool = False) -> Prepared:
    """The tokenized splits of `config`'s data. Pairs: always for the dpo / orpo objectives
    (other data is a DataError); with pairs_if_present, when every source is preference data."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    wanted = config.objective != "sft" or (pairs_if_present and config.task == "causal-lm")
    sources = [_read(config, source, chat, wanted) for source in config.data]
    names = _label_names(sources) if config.task == "classification" else None
    with_pairs = all(s.pairs for s in sources)
    enc, raw, pairs = {}, {}, {}
    for split in SPLITS:
        limit = config.max_train_samples if split == "train" else config.max_eval_samples
        weights = config.data_weights if split == "train" else None
        tables = [s.splits[split] for s in sources]
        taken = counts([len(t) for t in tables], weights, limit)
        picked = [
            t.select(pick(len(t), n, f"{config.seed}/{i}" if weights else None))
            for i, (t, n) in enumerate(zip(tables, taken, strict=True))
        ]
        picked = [s.finish(p) if s.finish else p for s, p in zip(sources, picked, strict=True)]
        used = [i for i, n in enumerate(taken) if n] or [0]  # empty sources add nothing
        parts = [_encode(sources[i], picked[i], tokenizer, names, config, chat) for i in used]
        enc[split] = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        raw[split] = picked[0] if len(sources) == 1 else _mixed_raw(sources, picked, chat)
        if with_pairs:
            encoded = [_encode_pairs(picked[i], tokenizer, config) for i in used]
            pairs[split] = encoded[0] if len(encoded) == 1 else concatenate_datasets(encoded)
    stats = _total([s.stats for s in sources])
    return Prepared(enc["train"], enc["validation"], enc["test"], names, stats, raw, pairs or None)


def _encode_pairs(ds: Dataset, tokenizer, config: TrainConfig) -> Dataset:
    if len(ds) == 0:
        return empty_pairs()
    examples = examples_of(column(ds, PAIR_COLUMN))
    return encode_preference(examples, tokenizer, max_length=config.max_length)


def _read(config: TrainConfig, source: str, chat: bool, pairs: bool = False) -> _Source:
    required = config.objective != "sft"
    if required and source == "tweets":
        raise DataError(
            f"--objective {config.objective} trains on preference pairs, and the default data "
            "'tweets' holds none — pass a preference file (prompt / chosen / rejected columns) "
            "with --data, or use --objective sft"
        )
    if config.task == "classification":
        if config.format != "auto":  # checked here, not in TrainConfig: compare validates
            # its `train:` extras as a TrainConfig of the default task
            raise ConfigError(
                f"--format {config.format} is a causal-LM data format — classification reads "
                "--text-column and --label-column: drop --format, or use --task causal-lm"
            )
        text_col, label_col = columns(config, source)
        splits, stats = load_table(
            source,
            key_columns=[text_col],
            label_column=label_col,
            encoding=config.encoding,
            seed=0,
        )
        return _Source(splits, stats, "classification", (text_col, label_col))
    if source == "tweets":  # the demo's instruction task: answer with the sentiment word
        if config.format not in ("auto", "messages"):
            raise DataError(
                f"--format {config.format} does not fit the default data 'tweets' (sentiment "
                "instructions as messages) — drop --format, or pass your own data with --data"
            )
        splits, stats = load_table(
            "tweets", key_columns=[TWEETS_TEXT], label_column=TWEETS_LABEL, seed=0
        )
        return _Source(splits, stats, "messages", finish=tweets_as_chat)
    parts = read_parts(source, config.encoding)
    renamed = {role: getattr(config, f"{role}_column") for role in DATA_COLUMNS}
    train = parts["train"]
    detected = detect_format(train.table, config.format, renamed, where=train.name)
    if required and detected.format != "preference":
        raise DataError(
            f"--objective {config.objective} trains on preference pairs, but {train.name} holds "
            f"the {detected.format} format (columns: {', '.join(train.table.column_names)}) — "
            "give chosen and rejected columns (map them with --chosen-column / "
            "--rejected-column), or use --objective sft"
        )
    pairs = pairs and detected.format == "preference"
    # every given split holds the training split's format (its optional columns may differ),
    # in the same conversation column (ShareGPT's can be `messages` or `conversations`)
    renamed["messages"] = detected.columns.get("messages") or renamed["messages"]
    converted = {}
    for split, part in parts.items():
        found = detect_format(part.table, detected.format, renamed, where=part.name)
        table = to_form(part.table, found, chat_template=chat, where=part.name)
        if pairs:
            cols = found.columns
            examples = preference_examples(
                part.table, cols["prompt"], cols["chosen"], cols["rejected"], part.name
            )
            table = table.add_column(PAIR_COLUMN, pair_column(examples))
        converted[split] = Part(part.name, table)
    # pairs are split on their supervised form, as supervised training on the file splits it
    sft_columns = [c for c in converted["train"].table.column_names if c != PAIR_COLUMN]
    splits, stats = split_parts(converted, seed=0, split_columns=sft_columns if pairs else None)
    return _Source(splits, stats, form_of(splits["train"]), pairs=pairs)


def _label_names(sources: list[_Source]) -> list[str]:
    if len(sources) == 1:
        return label_names(sources[0].splits, sources[0].columns[1])
    values = [v for s in sources for v in column(s.splits["train"], s.columns[1])]
    return label_names(Dataset.from_dict({"label": values}), "label")


def _encode(source: _Source, ds: Dataset, tokenizer, names, config: TrainConfig, chat: bool):
    if len(ds) == 0:  # a small file can leave a split empty (tokenizers reject empty batches)
        return Dataset.from_dict({"input_ids": [], "labels": []})
    if source.form == "classification":
        text_col, label_col = source.columns
        return encode_classification(
            ds,
            tokenizer,
            names,
            text_column=text_col,
            label_column=label_col,
            max_length=config.max_length,
        )
    if source.form == "messages":
        return encode_chat(ds, tokenizer, max_length=config.max_length)
    if source.form == "prompt-response":
        return encode_prompt_response(
            ds, tokenizer, max_length=config.max_length, use_chat_template=chat
        )
    return encode_text(ds, tokenizer, max_length=config.max_length)


def _mixed_raw(sources: list[_Source], picked: list[Dataset], chat: bool) -> Dataset:
    """One untokenized split of several sources, for generation metrics: the rows that have a
    reference answer, in one form (messages with a chat template, else prompt / response),
    shuffled (fixed seed) so the first rows evaluated come from every source."""
    if sources[0].form == "classification":
        rows = {"text": [], "label": []}
        for s, p in zip(sources, picked, strict=True):
            rows["text"] += column(p, s.columns[0])
            rows["label"] += [str(v) for v in column(p, s.columns[1])]
        return Dataset.from_dict(rows)
    target = "messages" if chat else "prompt-response"
    rows: dict[str, list] = {"messages": []} if chat else {"prompt": [], "response": []}
    for s, p in zip(sources, picked, strict=True):
        if s.form == target:
            for key in rows:
                rows[key] += column(p, key)
        elif s.form == "prompt-response" and chat:
            rows["messages"] += [
                [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                for q, a in zip(column(p, "prompt"), column(p, "response"), strict=True)
            ]
    if not next(iter(rows.values())):
        return Dataset.from_dict({"text": []})  # nothing to generate against: perplexity only
    return Dataset.from_dict(rows).shuffle(seed=0)


def _total(stats: list[SplitStats]) -> SplitStats:
    if len(stats) == 1:
        return stats[0]
    sizes = {split: sum(s.sizes[split] for s in stats) for split in SPLITS}
    return SplitStats(
        rows=sum(s.rows for s in stats),
        empty=sum(s.empty for s in stats),
        duplicates=sum(s.duplicates for s in stats),
        conflicts=sum(s.conflicts for s in stats),
        sizes=sizes,
    )
