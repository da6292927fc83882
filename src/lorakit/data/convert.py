"""Each data format -> one of the three forms the encoders of lorakit.data.formats read:
a `text` column, `prompt` + `response` columns, or a `messages` column.

Conversion runs on the tables as read, before deduplication and splitting, so an error names
the row of the file. The columns a format reads are replaced by the canonical ones; the
others stay, so rows are told apart by every column as before (the three original forms
under their default names are returned unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping

from datasets import Dataset, concatenate_datasets

from lorakit.data.detect import Detected
from lorakit.data.formats import text_column_values
from lorakit.data.preference import preference_examples, preference_sft_table
from lorakit.data.split import column
from lorakit.errors import DataError

# Stanford Alpaca's prompts (its train.py), for tokenizers without a chat template
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task{paired}. Write a response that "
    "appropriately completes the request."
)
ALPACA_PAIRED = ", paired with an input that provides further context"
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def to_form(ds: Dataset, detected: Detected, *, chat_template: bool, where: str) -> Dataset:
    """`ds` in the canonical form of its format (see the module doc).

    chat_template: whether the tokenizer has one; alpaca rows become system / user /
    assistant messages with it, and Alpaca's own prompt text without it.
    """
    fmt, cols = detected.format, detected.columns
    if fmt in ("text", "prompt-response", "messages"):
        return _rename(ds, {cols[role]: role for role in cols})
    if fmt == "sharegpt":
        new = {"messages": sharegpt_messages(column(ds, cols["messages"]), where)}
    elif fmt == "alpaca":
        new = alpaca_columns(ds, cols, chat_template)
    else:  # preference: supervised training reads prompt + chosen
        examples = preference_examples(ds, cols["prompt"], cols["chosen"], cols["rejected"], where)
        new = preference_sft_table(examples).to_dict()
    return _replace(ds, [c for c in cols.values() if c], new)


def form_of(ds: Dataset) -> str:
    """The canonical form a converted table holds."""
    names = ds.column_names
    if "messages" in names:
        return "messages"
    return "prompt-response" if {"prompt", "response"} <= set(names) else "text"


def sharegpt_messages(conversations: list, where: str) -> list[list[dict]]:
    """ShareGPT's [{from, value}] (or [{role, content}]) -> [{role, content}], roles mapped."""
    out = []
    for i, conversation in enumerate(conversations):
        row = f"row {i + 1} of {where}"
        if not isinstance(conversation, list) or not conversation:
            raise DataError(
                f"{row}: the conversation is {conversation!r:.40}, not a list of messages — "
                "fix or drop the row"
            )
        messages = []
        for m in conversation:
            m = m if isinstance(m, dict) else {}
            role = m["from"] if m.get("from") is not None else m.get("role")
            content = m["value"] if m.get("value") is not None else m.get("content")
            if role is None or content is None:
                raise DataError(
                    f"{row}: a message without from/value (or role/content) keys — fix the row"
                )
            mapped = SHAREGPT_ROLES.get(str(role).lower())
            if mapped is None:
                raise DataError(
                    f"{row}: unknown ShareGPT role {role!r} — use human/user, gpt/assistant or "
                    "system (rename or drop those messages)"
                )
            messages.append({"role": mapped, "content": content})
        out.append(messages)
    return out


def alpaca_columns(ds: Dataset, cols: Mapping[str, str | None], chat_template: bool) -> dict:
    """{messages} with a chat template, else {prompt, response} in Alpaca's own layout."""

    def values(role: str) -> list[str]:
        return text_column_values(ds, cols[role]) if cols.get(role) else [""] * len(ds)

    instructions, inputs, outputs = values("instruction"), values("input"), values("output")
    systems = values("system")
    if chat_template:
        messages = []
        for sys_text, instruction, extra, output in zip(
            systems, instructions, inputs, outputs, strict=True
        ):
            user = f"{instruction}\n\n{extra}" if extra else instruction
            head = [{"role": "system", "content": sys_text}] if sys_text else []
            messages.append(
                [*head, {"role": "user", "content": user}, {"role": "assistant", "content": output}]
            )
        return {"messages": messages}
    prompts = []
    for sys_text, instruction, extra in zip(systems, instructions, inputs, strict=True):
        preamble = sys_text or ALPACA_PREAMBLE.format(paired=ALPACA_PAIRED if extra else "")
        body = f"### Instruction:\n{instruction}\n\n"
        body += f"### Input:\n{extra}\n\n" if extra else ""
        prompts.append(f"{preamble}\n\n{body}### Response:\n")
    return {"prompt": prompts, "response": outputs}


def _rename(ds: Dataset, names: Mapping[str, str]) -> Dataset:
    moves = {a: b for a, b in names.items() if a != b}
    if not moves:
        return ds
    # a column already holding a canonical name that another column takes over goes
    clash = [b for b in moves.values() if b in ds.column_names and b not in moves]
    return ds.remove_columns(clash).rename_columns(moves)


def _replace(ds: Dataset, consumed: list[str], new: Mapping[str, list]) -> Dataset:
    gone = [*consumed, *(c for c in new if c in ds.column_names and c not in consumed)]
    rest, added = ds.remove_columns(gone), Dataset.from_dict(dict(new))
    # a table without columns has no rows either: nothing to put the new columns beside
    return concatenate_datasets([rest, added], axis=1) if rest.column_names else added
