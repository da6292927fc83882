"""Deduplication and the deterministic train/validation/test split shared by every data source.

A row's split is decided by a stable hash of its normalised text, not by RNG order: the same
text always lands in the same split, whatever the file order or row count, and duplicates
(same text, any case or spacing) are removed first, so no evaluation text is also trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from lorakit.errors import ConfigError

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# split names recognised in a data directory (file stems) or a saved / cached DatasetDict
SPLIT_STEMS = {"train": "train", "validation": "validation", "valid": "validation"}
SPLIT_STEMS |= {"val": "validation", "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class SplitStats:
    """What deduplication did, and the resulting split sizes (printed by the CLI)."""

    rows: int  # rows read, all sources together
    empty: int  # rows dropped: empty / missing text or label
    duplicates: int  # rows dropped: same normalised text (and label) as a kept row
    conflicts: int  # rows dropped: their text appears with different labels
    sizes: dict[str, int]

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {v:,}" for k, v in self.sizes.items())
        return (
            f"{self.rows:,} rows read; dropped {self.duplicates:,} duplicates, "
            f"{self.conflicts:,} with conflicting labels, {self.empty:,} empty → {sizes}"
        )


def column(ds: Dataset, name: str) -> list:
    """A column as a Python list (arrow's to_pylist: ~60x faster than iterating rows).

    Values stored as JSON (datasets' Json feature: e.g. chat messages whose key sets differ
    between messages) are decoded; every other column comes back as arrow gives it.
    """
    return ds.features.decode_column(ds.with_format("arrow")[name].to_pylist(), name)


def normalize_text(value) -> str:
    """Casefolded, whitespace-collapsed text; non-strings (chat message lists) as sorted JSON."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return " ".join(text.split()).casefold()


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise ConfigError(
            f"split fractions must be three numbers >= 0 (train > 0), got {list(fractions)} — "
            "e.g. [0.8, 0.1, 0.1]"
        )
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"split fractions must sum to 1, got {list(fractions)} (sum {sum(fractions)})"
        )
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def split_of(key: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """The split of a normalised key: a stable 64-bit hash mapped onto the fractions."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return next(n for n, f in zip(reversed(SPLITS), reversed(fractions), strict=True) if f > 0)


def dedupe_and_split(
    parts: Mapping[str, Dataset],
    key_columns: Sequence[str],
    label_column: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    split_columns: Sequence[str] | None = None,
) -> tuple[DatasetDict, SplitStats]:
    """Deduplicate `parts` together and return train/validation/test.

    `parts` holds "train" and optionally "validation" / "test" (explicit split files). A split
    that is not given is carved out of "train" by hashing. Each distinct key (the normalised
    `key_columns`) ends up in exactly one split, once: a key present in a given test or
    validation file stays there and is dropped from train. A key seen with different labels
    is dropped everywhere (neither label can be trusted; majority votes were mostly ties in
    the tweets data). The first occurrence of a row is the one kept. Within each split,
    rows are ordered by a hash of their key: source files are often sorted (the tweets CSV
    is sorted by label), and any prefix of a split (max_train_samples, a quick evaluation)
    must be a fair sample of it.

    split_columns: the columns whose key decides a row's split (default: key_columns), a
    subset of key_columns: preference pairs are deduplicated on the whole pair but split on
    their prompt + chosen answer, so they land where supervised training on the same file
    puts them, and two pairs with one chosen answer stay in one split.
    """
    fractions = check_fractions(fractions)
    given = [s for s in SPLITS if s in parts]
    if "train" not in given or set(parts) - set(SPLITS):
        raise ConfigError(f"data parts must be among {SPLITS} and include train, got {list(parts)}")
    hashed = [s for s in SPLITS if s == "train" or s not in parts]
    total = sum(fractions[SPLITS.index(s)] for s in hashed)
    hashed_fractions = [fractions[i] / total if s in hashed else 0.0 for i, s in enumerate(SPLITS)]

    # pass 1: keys and labels of every row; the labels each key was seen with
    rows, empty = 0, 0
    keyed: dict[str, list[tuple[str, object, str] | None]] = {}
    labels_of: dict[str, set] = {}
    for part in given:
        ds = parts[part]
        keys = _keys(ds, key_columns)
        homes = _keys(ds, split_columns) if split_columns is not None else keys
        labels = column(ds, label_column) if label_column else [None] * len(keys)
        rows += len(keys)
        keyed[part] = []
        for key, label, where in zip(keys, labels, homes, strict=True):
            if not key or (label_column and (label is None or str(label).strip() == "")):
                empty += 1
                keyed[part].append(None)
                continue
            keyed[part].append((key, label, where))
            labels_of.setdefault(key, set()).add(label)

    # pass 2: each key's home split — a given evaluation file wins, else the hash decides
    home: dict[str, str] = {}
    for part in ("test", "validation"):
        for item in keyed.get(part, []):
            if item is not None:
                home.setdefault(item[2], part)
    chosen: dict[str, list[int]] = {s: [] for s in SPLITS}
    sources = {s: (s if s in parts else "train") for s in SPLITS}
    kept: set[str] = set()
    conflicts = 0
    for part in given:
        for index, item in enumerate(keyed[part]):
            if item is None:
                continue
            key, where = item[0], item[2]
            if len(labels_of[key]) > 1:
                conflicts += 1
                continue
            split = home.get(where) or split_of(where, hashed_fractions, seed)
            if sources[split] != part or key in kept:
                continue  # a duplicate, or a copy of an evaluation text inside train
            kept.add(key)
            chosen[split].append((_order_key(key, seed), index))
    out = DatasetDict(
        {s: parts[sources[s]].select([i for _, i in sorted(chosen[s])]) for s in SPLITS}
    )
    sizes = {s: len(out[s]) for s in SPLITS}
    duplicates = rows - empty - conflicts - sum(sizes.values())
    return out, SplitStats(rows, empty, duplicates, conflicts, sizes)


def _order_key(key: str, seed: int) -> bytes:
    # a different hash from split_of's, so the order inside a split is not tied to the split
    return hashlib.blake2b(f"order\x1f{seed}\x1f{key}".encode(), digest_size=8).digest()


def _keys(ds: Dataset, key_columns: Sequence[str]) -> list[str]:
    """One key per row; "" when every key column is empty."""
    values = [column(ds, c) for c in key_columns]
    keys = []
    for row in zip(*values, strict=True):
        parts = [normalize_text(v) if v is not None else "" for v in row]
        # unit separator: ("a b", "c") and ("a", "b c") must stay different keys
        keys.append("\x1f".join(parts) if any(parts) else "")
    return keys
