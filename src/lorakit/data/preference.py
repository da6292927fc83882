"""Preference pairs (TRL's prompt / chosen / rejected) -> examples a DPO-style trainer reads.

Two shapes, as in TRL: plain strings, or conversational lists of {role, content} messages
(a string beside a conversational column is read as one user / assistant message). Without a
prompt column the prompt is implicit: the beginning that chosen and rejected share (TRL's
extract_prompt). Supervised training (SFT) on a preference file trains on prompt + chosen.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from datasets import Dataset

from lorakit.data.batching import collate
from lorakit.data.formats import IGNORE, chat_examples, prompt_response_examples
from lorakit.data.split import column
from lorakit.errors import DataError

log = logging.getLogger(__name__)
Turns = str | list[dict]
# The pair beside its supervised form in a prepared table, as JSON (prompt, chosen and
# rejected may be strings or message lists: arrow cannot hold both in one column).
PAIR_COLUMN = "_lorakit_pair"
PAIR_FIELDS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


@dataclass(frozen=True)
class PreferenceExample:
    """One pair. Conversational: prompt, chosen and rejected are message lists (chosen and
    rejected: what follows the prompt); otherwise all three are strings."""

    prompt: Turns
    chosen: Turns
    rejected: Turns

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


def preference_examples(
    ds: Dataset,
    prompt_column: str | None = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    where: str = "the data",
) -> list[PreferenceExample]:
    """Every row of `ds` as a PreferenceExample; a DataError names the first bad row.

    prompt_column None, or absent from `ds`: the prompt is implicit (see the module doc).
    """
    for name in (chosen_column, rejected_column):
        if name not in ds.column_names:
            raise DataError(
                f"{where} has no column {name!r} — preference data needs chosen and rejected "
                f"columns (found: {', '.join(ds.column_names)}); map them with --chosen-column "
                "/ --rejected-column"
            )
    has_prompt = prompt_column is not None and prompt_column in ds.column_names
    prompts = column(ds, prompt_column) if has_prompt else [None] * len(ds)
    rows = zip(prompts, column(ds, chosen_column), column(ds, rejected_column), strict=True)
    return [_example(p, c, r, f"row {i + 1} of {where}") for i, (p, c, r) in enumerate(rows)]


def preference_sft_table(examples: Sequence[PreferenceExample]) -> Dataset:
    """What supervised training reads: prompt + chosen, as a `messages` column
    (conversational pairs) or `prompt` / `response` columns (strings)."""
    if examples and all(e.conversational for e in examples):
        return Dataset.from_dict({"messages": [[*e.prompt, *e.chosen] for e in examples]})
    return Dataset.from_dict(
        {
            "prompt": [_as_text(e.prompt) for e in examples],
            "response": [_as_text(e.chosen) for e in examples],
        }
    )


def encode_preference(
    examples: Sequence[PreferenceExample],
    tokenizer,
    *,
    max_length: int = 512,
    use_chat_template: bool | None = None,
) -> Dataset:
    """chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels of each pair.

    Labels are IGNORE on the prompt: only the response tokens (the assistant turns after the
    prompt, or the response string and its EOS) carry loss. Conversational pairs go through
    the chat template; string pairs too when use_chat_template (default: when the tokenizer
    has one, as prompt/response data), else prompt + response + EOS. Both sequences are cut
    to max_length; pairs where either has no response token left are dropped.
    """
    if use_chat_template is None:
        use_chat_template = bool(getattr(tokenizer, "chat_template", None))
    chat = [i for i, e in enumerate(examples) if e.conversational or use_chat_template]
    plain = sorted(set(range(len(examples))) - set(chat))
    encoded: dict[int, tuple] = {}
    for side in ("chosen", "rejected"):
        convs = [_conversation(examples[i], side) for i in chat]
        firsts = [len(_turns(examples[i].prompt, "user")) for i in chat]
        pairs = chat_examples(tokenizer, convs, firsts)
        pairs += prompt_response_examples(
            tokenizer,
            [examples[i].prompt for i in plain],
            [getattr(examples[i], side) for i in plain],
        )
        for i, (ids, labels) in zip(chat + plain, pairs, strict=True):
            encoded[i] = (*encoded.get(i, ()), ids[:max_length], labels[:max_length])
    keep = [i for i in range(len(examples)) if all(_trains(encoded[i][k]) for k in (1, 3))]
    if len(keep) < len(examples):
        log.warning(
            "dropped %d of %d preference pairs with no response token left after truncation",
            len(examples) - len(keep),
            len(examples),
        )
    if not keep:
        raise DataError("no preference pair has a response token left — raise max_length")
    names = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
    return Dataset.from_dict({n: [encoded[i][k] for i in keep] for k, n in enumerate(names)})


def pair_column(examples: Sequence[PreferenceExample]) -> list[str]:
    """Each pair as one JSON string (PAIR_COLUMN); examples_of reads them back."""
    return [json.dumps(asdict(e), sort_keys=True) for e in examples]


def examples_of(values: Sequence[str]) -> list[PreferenceExample]:
    return [PreferenceExample(**json.loads(v)) for v in values]


def empty_pairs() -> Dataset:
    return Dataset.from_dict({name: [] for name in PAIR_FIELDS})


def pair_lengths(ds: Dataset) -> list[int]:
    """The longer sequence of each encoded pair: what a batch of pairs is padded to."""
    import pyarrow.compute as pc

    if len(ds) == 0:  # empty_pairs' columns have no list type (arrow: null) to measure
        return []
    table = ds.with_format("arrow")
    chosen = pc.list_value_length(table["chosen_input_ids"]).to_pylist()
    rejected = pc.list_value_length(table["rejected_input_ids"]).to_pylist()
    return [max(c, r) for c, r in zip(chosen, rejected, strict=True)]


def collate_pairs(rows: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Encoded pairs -> one batch of 2n sequences: the n chosen rows, then the n rejected ones
    (one forward scores both), padded on the right to the longest of all."""
    sides = [
        {"input_ids": r[f"{side}_input_ids"], "labels": r[f"{side}_labels"]}
        for side in ("chosen", "rejected")
        for r in rows
    ]
    return collate(sides, pad_id)


def _trains(labels: list[int]) -> bool:
    return any(t != IGNORE for t in labels)


def _conversation(example: PreferenceExample, side: str) -> list[dict]:
    return [*_turns(example.prompt, "user"), *_turns(getattr(example, side), "assistant")]


def _turns(value: Turns, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value or role == "assistant" else []
    return value


def _as_text(value: Turns) -> str:
    return value if isinstance(value, str) else "\n".join(str(m["content"]) for m in value)


def _example(prompt, chosen, rejected, where: str) -> PreferenceExample:
    if any(isinstance(v, list) for v in (prompt, chosen, rejected)):
        prompt = _messages(prompt, "user", "prompt", where) if prompt is not None else None
        chosen = _messages(chosen, "assistant", "chosen", where)
        rejected = _messages(rejected, "assistant", "rejected", where)
        if prompt is None:  # implicit: the messages both share
            n = 0
            while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
                n += 1
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        for name, turns in (("chosen", chosen), ("rejected", rejected)):
            if not any(m["role"] == "assistant" for m in turns):
                raise DataError(
                    f"{where}: {name} has no assistant message after the prompt — give each "
                    "answer as an assistant message"
                )
        return PreferenceExample(prompt, chosen, rejected)
    for name, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
        if not isinstance(value, str) and not (name == "prompt" and value is None):
            found = "nothing" if value is None else f"{type(value).__name__} {value!r:.40}"
            raise DataError(
                f"{where}: {name} holds {found}, not text or a list of messages — fix the row"
            )
    if prompt is None:  # implicit: the longest common beginning, without a trailing space
        n = len(os.path.commonprefix([chosen, rejected]))
        if n and chosen[n - 1] == " ":  # the space starts the answers (TRL's rule)
            n -= 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if not chosen or not rejected:
        raise DataError(
            f"{where}: an empty chosen or rejected answer (after the prompt) — fix the row, or "
            "give the prompt in its own column"
        )
    return PreferenceExample(prompt, chosen, rejected)


def _messages(value, role: str, name: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: {name} holds {value!r:.40}, not text or a list of messages — fix the row"
        )
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") is None or m.get("content") is None:
            raise DataError(
                f"{where}: {name} messages must be {{'role': ..., 'content': ...}} objects, got "
                f"{m!r:.60} — fix the row"
            )
        # arrow gives every message every key seen in the column; unset ones arrive as None
        out.append({k: v for k, v in m.items() if v is not None})
    return out
