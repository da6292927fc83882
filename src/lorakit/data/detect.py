"""Which causal-LM data format a table holds: detected from its columns, or the one --format names.

Formats and the columns they read (the `--<column>-column` flags rename them):

    preference       chosen, rejected, [prompt]       TRL's preference pairs
    messages         messages                         OpenAI chat: [{role, content}, ...]
    sharegpt         conversations                    [{from, value}, ...] (role/content too)
    alpaca           instruction, output, [input], [system]
    prompt-response  prompt, response
    text             text

Detection takes the first format of that list whose columns are all there: the most specific
first, since a preference file has a `prompt` and Stanford Alpaca's file a `text` column. A
`messages` column whose messages use ShareGPT's `from` key or its human / gpt roles is ShareGPT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from datasets import Dataset

from lorakit.config import DATA_COLUMNS
from lorakit.data.split import column
from lorakit.errors import DataError

FORMATS = ("preference", "messages", "sharegpt", "alpaca", "prompt-response", "text")
# a format's columns: role -> default name; optional roles after the required ones
REQUIRED: dict[str, tuple[str, ...]] = {
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "sharegpt": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt-response": ("prompt", "response"),
    "text": ("text",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {"preference": ("prompt",), "alpaca": ("input", "system")}
DEFAULT_NAMES = {"sharegpt": {"messages": "conversations"}}
# the flag that renames each role (the config field `<role>_column`: lorakit.config.DATA_COLUMNS)
FLAGS = {role: f"--{role}-column" for role in DATA_COLUMNS}


@dataclass(frozen=True)
class Detected:
    """A table's format and the column that holds each of its roles (None: optional, absent)."""

    format: str
    columns: dict[str, str | None] = field(default_factory=dict)


def describe_formats() -> str:
    """`name (col, col, [optional])` for every format, as errors list them."""
    parts = []
    for fmt in FORMATS:
        names = [_default(fmt, r) for r in REQUIRED[fmt]]
        names += [f"[{_default(fmt, r)}]" for r in OPTIONAL.get(fmt, ())]
        parts.append(f"{fmt} ({', '.join(names)})")
    return "; ".join(parts)


def detect_format(
    ds: Dataset,
    forced: str = "auto",
    renamed: Mapping[str, str | None] | None = None,
    where: str = "the data",
) -> Detected:
    """The format of `ds` (`forced`, or the first that fits), with its column names.

    renamed: {role: column} from the --*-column flags (None: the default name). A renamed
    column that `ds` lacks is an error whatever the format, so a typo never falls through to
    another format.
    """
    renamed = {k: v for k, v in (renamed or {}).items() if v}
    names = ds.column_names
    missing = [f"{col!r} ({FLAGS[role]})" for role, col in renamed.items() if col not in names]
    if missing:
        raise DataError(
            f"{where} has no column {', '.join(missing)} — columns found: {', '.join(names)}"
        )
    if forced != "auto":
        found = _fit(forced, names, renamed)
        if found is None:
            wanted = ", ".join(_name(forced, r, renamed) for r in REQUIRED[forced])
            flags = [FLAGS[r] for r in REQUIRED[forced] if r in FLAGS]
            fix = f"map the columns with {' / '.join(flags)}" if flags else "rename the columns"
            raise DataError(
                f"{where} does not hold the {forced} format (--format {forced} needs the columns "
                f"{wanted}; found: {', '.join(names)}) — {fix}, or pick the format that fits "
                "with --format (auto detects it)"
            )
        return found
    for fmt in FORMATS:
        found = _fit(fmt, names, renamed)
        if found is None:
            continue
        if fmt == "messages" and _looks_sharegpt(ds, found.columns["messages"]):
            return Detected("sharegpt", found.columns)
        return found
    raise DataError(
        f"{where}: no data format fits its columns ({', '.join(names)}) — the formats and their "
        f"columns: {describe_formats()}; rename the columns, map them with "
        f"{', '.join(FLAGS.values())}, or pick a format with --format"
    )


def _default(fmt: str, role: str) -> str:
    return DEFAULT_NAMES.get(fmt, {}).get(role, role)


def _name(fmt: str, role: str, renamed: Mapping[str, str]) -> str:
    return renamed.get(role) or _default(fmt, role)


def _fit(fmt: str, names: Sequence[str], renamed: Mapping[str, str]) -> Detected | None:
    required = {r: _name(fmt, r, renamed) for r in REQUIRED[fmt]}
    if any(col not in names for col in required.values()):
        return None
    optional = {r: _name(fmt, r, renamed) for r in OPTIONAL.get(fmt, ())}
    optional = {r: (col if col in names else None) for r, col in optional.items()}
    return Detected(fmt, {**required, **optional})


def _looks_sharegpt(ds: Dataset, name: str, rows: int = 100) -> bool:
    """Whether the first conversations use ShareGPT's `from` key or its human / gpt roles."""
    head = column(ds.select(range(min(rows, len(ds)))), name)
    return any(
        isinstance(m, dict) and (m.get("from") is not None or m.get("role") in ("human", "gpt"))
        for conversation in head
        if isinstance(conversation, list)
        for m in conversation
    )
