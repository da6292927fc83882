"""Format detection from the columns, --format, and the --*-column renames."""

import pytest
from datasets import Dataset

from lorakit.data.detect import FORMATS, detect_format
from lorakit.errors import DataError


def _table(*names, messages=None):
    rows = {n: ["x"] for n in names}
    if messages is not None:
        rows["messages"] = [messages]
    return Dataset.from_dict(rows)


CHAT = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["text"], "text"),
        (["prompt", "response", "id"], "prompt-response"),
        (["instruction", "output"], "alpaca"),
        # Stanford Alpaca's own file also holds the rendered `text`: alpaca wins
        (["instruction", "input", "output", "text"], "alpaca"),
        # a preference file has a prompt column too
        (["prompt", "chosen", "rejected"], "preference"),
        (["chosen", "rejected"], "preference"),
        (["conversations"], "sharegpt"),
    ],
)
def test_detected_from_the_columns(names, expected):
    assert detect_format(_table(*names)).format == expected


def test_messages_and_sharegpt_told_apart_by_their_keys():
    assert detect_format(_table("text", messages=CHAT)).format == "messages"
    sharegpt = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
    assert detect_format(_table(messages=sharegpt)).format == "sharegpt"
    # role/content keys with ShareGPT's role names are ShareGPT too
    named = [{"role": "human", "content": "a"}, {"role": "gpt", "content": "b"}]
    assert detect_format(_table(messages=named)).format == "sharegpt"


def test_optional_columns_are_none_when_absent():
    found = detect_format(_table("instruction", "output", "system"))
    assert found.columns == {
        "instruction": "instruction",
        "output": "output",
        "input": None,
        "system": "system",
    }
    assert detect_format(_table("chosen", "rejected")).columns["prompt"] is None


def test_renamed_columns():
    found = detect_format(_table("q", "a"), renamed={"prompt": "q", "response": "a"})
    assert (found.format, found.columns) == ("prompt-response", {"prompt": "q", "response": "a"})
    found = detect_format(_table("body"), renamed={"text": "body"})
    assert found.columns == {"text": "body"}
    # alpaca's columns are renamed the same way (optional ones too)
    renamed = {"instruction": "task", "output": "answer", "input": "context"}
    found = detect_format(_table("task", "answer", "context"), renamed=renamed)
    assert (found.format, found.columns) == (
        "alpaca",
        {"instruction": "task", "output": "answer", "input": "context", "system": None},
    )
    with pytest.raises(DataError, match=r"'sys' \(--system-column\)"):
        detect_format(_table("task", "answer"), renamed={**renamed, "system": "sys"})
    # a renamed column that is missing is an error, never a fall-through to another format
    with pytest.raises(DataError, match=r"no column 'question' \(--prompt-column\)"):
        detect_format(_table("text"), renamed={"prompt": "question"})


def test_no_format_fits_lists_formats_and_columns():
    with pytest.raises(DataError) as info:
        detect_format(_table("question", "answer"), where="qa.jsonl")
    message = str(info.value)
    assert "\n" not in message and message.startswith("qa.jsonl: no data format fits")
    assert "(question, answer)" in message
    for fmt in FORMATS:
        assert f"{fmt} (" in message
    assert "alpaca (instruction, output, [input], [system])" in message
    assert "sharegpt (conversations)" in message
    assert "--instruction-column" in message and "--rejected-column" in message


def test_forced_format():
    both = _table("text", "prompt", "response")
    assert detect_format(both).format == "prompt-response"
    assert detect_format(both, forced="text").format == "text"
    with pytest.raises(DataError) as info:
        detect_format(_table("prompt", "response"), forced="alpaca", where="qa.jsonl")
    message = str(info.value)
    assert "\n" not in message
    assert "qa.jsonl does not hold the alpaca format" in message
    assert "needs the columns instruction, output; found: prompt, response" in message
    with pytest.raises(DataError, match="map the columns with --chosen-column / --rejected-column"):
        detect_format(_table("prompt"), forced="preference")
