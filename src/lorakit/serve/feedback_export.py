"""`lorakit feedback export / report`: stored feedback as preference pairs, and its scores.

Pairs, per model and prompt (the exact messages, or the exact prompt text):
- a reply rated down with a better reply written by the user: chosen = better, rejected = reply;
- every reply rated up with every reply rated down.
A reply rated both up and down for the same prompt is contested and goes into no pair;
identical pairs are written once, also when several models' feedback gives them. Chat
prompts are written in TRL's conversational form (prompt = messages, chosen / rejected = one
assistant message) so the chat template applies when training; plain prompts as strings.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from lorakit.atomic import write_text
from lorakit.config import StrictConfig
from lorakit.errors import DataError, OutputExistsError
from lorakit.serve.feedback import Feedback, read_feedback

# The columns of an exported row: TRL's three and a mark, the same in every row (a column
# that varied, like the feedback ids, would enter the key that splits pairs into train and
# validation, and pairs of one prompt + chosen could land on both sides). The mark is how
# --overwrite recognises a file this command wrote: it replaces no other file.
ROW_KEYS = ("prompt", "chosen", "rejected", "source")
MARK = "lorakit feedback export"
MAX_RATED_PAIRS = 100
_DB_HELP = (
    "The feedback database `lorakit serve` wrote (default: feedback.sqlite3 in lorakit's cache)."
)


class FeedbackExportConfig(StrictConfig):
    db: str | None = Field(None, description=_DB_HELP)
    output: str = Field(description="The JSONL file of preference pairs to write.")
    model: str | None = Field(None, description="Only the feedback on this model or adapter.")
    kind: Literal["auto", "chat", "text"] = Field(
        "auto",
        description="Which feedback: chat (messages) or text (completion prompts); auto: the "
        "kind the database holds (both kinds cannot share one file).",
    )
    overwrite: bool = Field(False, description="Replace an output this command wrote earlier.")
    max_pairs_per_prompt: int = Field(
        MAX_RATED_PAIRS,
        ge=1,
        description="👍-vs-👎 pairs per model and prompt at most (the earliest ratings first): "
        "n 👍 and m 👎 replies make n·m pairs.",
    )


class FeedbackReportConfig(StrictConfig):
    db: str | None = Field(None, description=_DB_HELP)
    model: str | None = Field(None, description="Only this model or adapter.")
    as_json: bool = Field(False, description="Print JSON instead of a table.")


@dataclass
class Pair:
    model: str
    kind: str
    prompt: str | list[dict]
    chosen: str
    rejected: str
    ids: list[int] = field(default_factory=list)
    origin: str = "better"  # "better": a user's better reply; "rated": a 👍 reply vs a 👎 one

    def row(self) -> dict:
        chosen, rejected = self.chosen, self.rejected
        if self.kind == "chat":
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        return dict(zip(ROW_KEYS, (self.prompt, chosen, rejected, MARK), strict=True))


def pairs_of(rows: list[Feedback], max_rated: int = MAX_RATED_PAIRS) -> list[Pair]:
    """The preference pairs of `rows` (see the module doc), in the order of their first row;
    at most `max_rated` 👍-vs-👎 pairs per prompt (n·m grows fast: a client that sends many
    distinct replies to one prompt must not make the export quadratic)."""
    groups: dict[tuple, list[Feedback]] = defaultdict(list)
    for r in rows:
        groups[(r.model, r.kind, _key(r.prompt))].append(r)
    pairs: dict[tuple, Pair] = {}

    def add(group: list[Feedback], chosen: str, rejected: str, ids: list[int], origin: str):
        if chosen == rejected:
            return
        first = group[0]  # the key leaves the model out: one row per pair in the file
        key = (first.kind, _key(first.prompt), chosen, rejected)
        if key not in pairs:
            pairs[key] = Pair(first.model, first.kind, first.prompt, chosen, rejected, [], origin)
        pairs[key].ids = sorted({*pairs[key].ids, *ids})

    for group in groups.values():
        ups = defaultdict(list)
        downs = defaultdict(list)
        for r in group:
            (ups if r.rating > 0 else downs)[r.reply].append(r.id)
        contested = ups.keys() & downs.keys()
        for r in group:
            if r.rating < 0 and r.better is not None and r.reply not in contested:
                add(group, r.better, r.reply, [r.id], "better")
        rated = (
            (up, down, up_ids + down_ids)
            for up, up_ids in ups.items()
            for down, down_ids in downs.items()
            if up not in contested and down not in contested
        )
        for up, down, ids in itertools.islice(rated, max_rated):
            add(group, up, down, ids, "rated")
    return sorted(pairs.values(), key=lambda p: p.ids[0])


def _key(prompt: str | list[dict]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def export_pairs(config: FeedbackExportConfig) -> tuple[list[Pair], int]:
    """Write config.output (complete or absent); (the pairs written, feedback rows read)."""
    out = Path(config.output)
    check_output(out, config.overwrite)  # before any work
    rows = _read(config.db, config.model)
    kinds = {r.kind for r in rows}
    if config.kind == "auto" and len(kinds) > 1:
        raise DataError(
            "the database holds both chat and completion feedback, which cannot share one "
            "preference file — export each with --kind chat and --kind text"
        )
    rows = [r for r in rows if config.kind in ("auto", r.kind)]
    pairs = pairs_of(rows, config.max_pairs_per_prompt)
    if not pairs:
        raise DataError(
            f"no preference pairs in {len(rows)} feedback rows — a pair needs a 👎 reply with a "
            "better reply, or a 👍 and a 👎 reply to the same prompt; nothing written"
        )
    text = "".join(json.dumps(p.row(), ensure_ascii=False) + "\n" for p in pairs)
    write_text(out, text)
    return pairs, len(rows)


def _read(db: str | None, model: str | None) -> list[Feedback]:
    rows = read_feedback(db, model)
    if model is not None and not rows:  # a misspelt name must not look like no feedback
        known = sorted({r.model for r in read_feedback(db)})
        raise DataError(f"no feedback on {model!r} in the database — models there: {known}")
    return rows


def check_output(path: Path, overwrite: bool) -> None:
    """An existing output is refused unless --overwrite, and then replaced only if it is a
    file this command wrote (every line a JSON object of exactly ROW_KEYS, marked)."""
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise OutputExistsError(
            f"{path} already exists — pass --overwrite to replace it, or pick another --output"
        )
    if path.is_symlink() or not path.is_file() or not _exported(path):
        raise OutputExistsError(
            f"{path} exists and is not a file `lorakit feedback export` wrote — --overwrite "
            "replaces only those; move it or pick another --output"
        )


def _exported(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            lines = 0
            for line in f:
                row = json.loads(line)
                if not isinstance(row, dict) or tuple(row) != ROW_KEYS or row["source"] != MARK:
                    return False
                lines += 1
            return lines > 0
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON lines
        return False


def report(config: FeedbackReportConfig) -> dict:
    """Per model: 👍 and 👎 counts, the feedback score up / (up + down), better replies given,
    and the pairs an export of that model would write; and the same over all models (its
    pairs counted once where several models give the same)."""
    rows = _read(config.db, config.model)
    by_model: dict[str, list[Feedback]] = defaultdict(list)
    for r in rows:
        by_model[r.model].append(r)
    models = [_scores(name, group) for name, group in sorted(by_model.items())]
    return {"models": models, "total": _scores(None, rows)}


def _scores(model: str | None, rows: list[Feedback]) -> dict:
    up = sum(r.rating > 0 for r in rows)
    down = len(rows) - up
    return {
        **({"model": model} if model is not None else {}),
        "up": up,
        "down": down,
        "score": round(up / (up + down), 4) if rows else None,
        "better": sum(r.better is not None for r in rows),
        "pairs": len(pairs_of(rows)),
    }


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="feedback per model (score = 👍 / (👍 + 👎))")
    for name in ("model", "👍", "👎", "score", "better replies", "pairs"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for m in [*result["models"], {"model": "all", **result["total"]}]:
        score = "-" if m["score"] is None else f"{m['score']:.1%}"
        table.add_row(
            m["model"], str(m["up"]), str(m["down"]), score, str(m["better"]), str(m["pairs"])
        )
    Console().print(table)
