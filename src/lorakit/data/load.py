"""The user's tables (CSV, TSV, JSON, JSONL, Parquet files; datasets' save_to_disk
directories and cached datasets, see lorakit.data.stored) -> deduplicated train/validation/test.

Files are read with `datasets`; everything a user can get wrong becomes a DataError that says
how to fix it. One file is split deterministically like the default data (lorakit.data.split);
a directory of train/validation/test files, a mapping of them, or a saved / cached
DatasetDict keeps the given splits.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from lorakit.data.split import DEFAULT_FRACTIONS, SPLIT_STEMS, SplitStats, column, dedupe_and_split
from lorakit.data.stored import HUB_NAME, cached_dataset, is_saved_dataset, not_found, read_saved
from lorakit.errors import DataError
from lorakit.quiet import silenced

# extension -> (datasets builder, extra builder arguments)
FORMATS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def read_file(path: str | Path, encoding: str = "utf-8") -> Dataset:
    """One file as a Dataset (no splitting, no deduplication)."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = "it is a directory: pass a file" if path.is_dir() else "check the path"
        raise DataError(f"data file {path} not found — {hint}, or use the default data 'tweets'")
    if path.suffix.lower() not in FORMATS:
        raise DataError(
            f"{path.name}: unknown data format {path.suffix or '(no extension)'!r} — use one of "
            f"{', '.join(FORMATS)} (rename the file if its content is one of these)"
        )
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r} — use e.g. utf-8 or latin-1") from None
    builder, extra = FORMATS[path.suffix.lower()]
    if builder != "parquet":
        extra = {**extra, "encoding": encoding}
    if _is_blank(path):
        raise DataError(f"{path} is empty — add rows to it, or point to another file")
    try:
        # datasets logs its parse failure as an ERROR before raising; we raise our own line
        with silenced("datasets"):
            table = datasets.load_dataset(builder, data_files=str(path), split="train", **extra)
    except datasets.exceptions.DatasetGenerationError as exc:
        raise _parse_error(path, builder, encoding, exc) from exc
    except ValueError as exc:
        if "corresponds to no data" in str(exc):  # a CSV with a header and no rows
            raise DataError(f"{path} has no rows — add rows to it") from None
        raise DataError(
            f"could not read {path} as {builder.upper()}: {exc} — check the file"
        ) from exc
    if len(table) == 0:
        raise DataError(f"{path} has no rows — add rows to it")
    return table


def _is_blank(path: Path) -> bool:
    size = path.stat().st_size
    return size == 0 or (size < 4096 and not path.read_bytes().strip())


def _parse_error(path: Path, builder: str, encoding: str, exc: Exception) -> DataError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, UnicodeDecodeError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, UnicodeDecodeError):
        other = "latin-1" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else "utf-8"
        return DataError(
            f"{path} is not valid {encoding} text (byte {cause.object[cause.start : cause.start + 1]!r}) "
            f"— pass its encoding, e.g. `--encoding {other}`, or re-save the file as UTF-8"
        )
    reason = exc.__cause__ or exc
    return DataError(
        f"could not parse {path} as {builder.upper()}: {reason} — check the file's syntax"
        + (" (JSON Lines: one object per line)" if builder == "json" else "")
    )


def check_columns(ds: Dataset, columns: Iterable[str | None], source: str = "the data") -> None:
    """DataError naming the available columns when any of `columns` is missing."""
    missing = [c for c in columns if c is not None and c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source} has no column {', '.join(map(repr, missing))} — available columns: "
            f"{', '.join(ds.column_names)}; pick them with --text-column / --label-column"
        )


def check_classes(ds: Dataset, label_column: str, source: str = "the training data") -> list:
    """The distinct labels of `ds`, sorted; a DataError when fewer than two."""
    # numbers in numeric order (2 before 10), other labels alphabetically
    labels = sorted({v for v in column(ds, label_column) if v is not None}, key=_label_order)
    if len(labels) < 2:
        found = f"only {labels[0]!r}" if labels else "no labels"
        raise DataError(
            f"{source} has {found} in column {label_column!r} — classification needs at least "
            "two classes; check --label-column"
        )
    return labels


def _label_order(value) -> tuple:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if is_number else (1, 0, str(value))


def find_split_files(directory: str | Path) -> dict[str, Path]:
    """{split: file} from a directory: train/validation(valid, val, dev)/test.<ext>, or its only file."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    found: dict[str, Path] = {}
    for f in files:
        split = SPLIT_STEMS.get(f.stem.lower())
        if split in found:
            raise DataError(
                f"{directory} has two {split} files ({found[split].name}, {f.name}) — keep one"
            )
        if split:
            found[split] = f
    if not found and len(files) == 1:
        return {"train": files[0]}
    if "train" not in found:
        names = ", ".join(f.name for f in files) or "no data files"
        raise DataError(
            f"{directory} has no train file (found: {names}) — name the files train/validation/test"
            f" with one of the extensions {', '.join(FORMATS)}, or pass a single file"
        )
    return found


@dataclass(frozen=True)
class Part:
    """One given split of a source: its table and how errors name it."""

    name: str  # the file name, or `source[split]` for saved and cached datasets
    table: Dataset


def read_parts(source: str | Path | Mapping[str, str | Path], encoding: str = "utf-8"):
    """{split: Part} of a file, a directory (split files, or a datasets save_to_disk), a
    mapping {split: file}, or the name of a dataset in the local HF datasets cache."""
    if isinstance(source, Mapping):
        files = {str(k): Path(v).expanduser() for k, v in source.items()}
    else:
        path = Path(source).expanduser()
        if path.is_dir() and is_saved_dataset(path):
            return _named(read_saved(path), path.name)
        if path.is_dir():
            files = find_split_files(path)
        elif path.exists() or path.suffix.lower() in FORMATS or not HUB_NAME.match(str(source)):
            files = {"train": path}  # a path (read_file says when it is missing)
        else:
            cached = cached_dataset(str(source))
            if cached is None:
                raise not_found(str(source))
            return _named(cached, str(source))
    if "train" not in files:
        raise DataError(f"no train file among {sorted(files)} — give a train file")
    return {split: Part(f.name, read_file(f, encoding)) for split, f in files.items()}


def _named(tables: Mapping[str, Dataset], where: str) -> dict[str, Part]:
    for split, ds in tables.items():
        if len(ds) == 0:
            raise DataError(f"{where}[{split}] has no rows — add rows to it")
    return {split: Part(f"{where}[{split}]", ds) for split, ds in tables.items()}


def split_parts(
    parts: Mapping[str, Part],
    *,
    key_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    split_columns: Sequence[str] | None = None,
) -> tuple[DatasetDict, SplitStats]:
    """Deduplicated train/validation/test of read parts (see load_table; split_columns:
    see dedupe_and_split)."""
    tables = {split: part.table for split, part in parts.items()}
    keys = key_columns or [c for c in tables["train"].column_names if c != label_column]
    for part in parts.values():
        check_columns(part.table, [*keys, label_column], source=part.name)
    out, stats = dedupe_and_split(tables, keys, label_column, fractions, seed, split_columns)
    _check_split(out, stats, label_column)
    return out, stats


def load_table(
    source: str | Path | Mapping[str, str | Path],
    *,
    key_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    encoding: str = "utf-8",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[DatasetDict, SplitStats]:
    """Deduplicated train/validation/test from 'tweets' or any source read_parts reads.

    key_columns: the columns that identify a row for deduplication and splitting (default:
    every column but `label_column`). label_column: set for classification; texts seen with
    different labels are dropped and at least two classes must remain.
    Splits missing from a directory or mapping are carved out of train by hashing.
    """
    if not (isinstance(source, str) and source == "tweets"):
        parts = read_parts(source, encoding)
        return split_parts(
            parts,
            key_columns=key_columns,
            label_column=label_column,
            fractions=fractions,
            seed=seed,
        )
    from lorakit.data.tweets import load_tweets

    out, stats = load_tweets(fractions, seed)
    check_columns(out["train"], [*(key_columns or []), label_column], source="tweets")
    _check_split(out, stats, label_column)
    return out, stats


def _check_split(out: DatasetDict, stats: SplitStats, label_column: str | None) -> None:
    if len(out["train"]) == 0:
        raise DataError(f"no training rows left: {stats.summary()} — check the data")
    if label_column:
        check_classes(out["train"], label_column)
