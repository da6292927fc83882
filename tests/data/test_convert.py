"""Alpaca and ShareGPT files -> tokenized examples, loss on the answers only (real SmolLM2)."""

import json

import pytest

from lorakit.config import TrainConfig
from lorakit.data.formats import IGNORE
from lorakit.data.prepare import prepare
from lorakit.errors import ConfigError, DataError

SYSTEM_DEFAULT = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"  # fmt: skip


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lm(data, **kw):
    return TrainConfig(task="causal-lm", data=str(data), **{"max_length": 320, **kw})


def _decoded(tokenizer, rows):
    """(whole text, supervised text) of every example, after checking labels copy the ids."""
    out = []
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        assert all(y in (IGNORE, t) for t, y in zip(ids, labels, strict=True))
        kept = [t for t, y in zip(ids, labels, strict=True) if y != IGNORE]
        out.append((tokenizer.decode(ids), tokenizer.decode(kept)))
    return out


def _examples(prepared):
    return [*prepared.train, *prepared.validation, *prepared.test]


def test_alpaca_through_the_chat_template(tmp_path, smollm2_tokenizer):
    rows = [
        {"instruction": f"Add one to {i}.", "input": f"The number is {i}." if i % 2 else "",
         "output": f"It is {i + 1}."}
        for i in range(20)
    ]  # fmt: skip
    prepared = prepare(_lm(_jsonl(tmp_path / "alpaca.jsonl", rows)), smollm2_tokenizer)
    sizes = prepared.stats.sizes
    assert sum(sizes.values()) == 20 and prepared.stats.duplicates == 0
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (
        sizes["train"],
        sizes["validation"],
        sizes["test"],
    )
    seven = SYSTEM_DEFAULT + (
        "<|im_start|>user\nAdd one to 7.\n\nThe number is 7.<|im_end|>\n"
        "<|im_start|>assistant\nIt is 8.<|im_end|>\n"
    )
    eight = SYSTEM_DEFAULT + (
        "<|im_start|>user\nAdd one to 8.<|im_end|>\n<|im_start|>assistant\nIt is 9.<|im_end|>\n"
    )
    found = dict(_decoded(smollm2_tokenizer, _examples(prepared)))
    assert found[seven] == "It is 8.<|im_end|>\n"  # the input joins the instruction, untrained
    assert found[eight] == "It is 9.<|im_end|>\n"  # no input: the instruction alone
    n_answer = len(smollm2_tokenizer("It is 8.<|im_end|>\n", add_special_tokens=False)["input_ids"])
    seven_row = next(
        e for e in _examples(prepared) if smollm2_tokenizer.decode(e["input_ids"]) == seven
    )
    assert sum(y != IGNORE for y in seven_row["labels"]) == n_answer
    # the untokenized split eval generates from is in messages form
    assert prepared.raw["train"].column_names == ["messages"]


def test_alpaca_system_column_replaces_the_default_system_turn(tmp_path, smollm2_tokenizer):
    rows = [{"instruction": f"Say {w}.", "output": w, "system": "Answer in one word."}
            for w in ("yes", "no", "maybe", "sure")]  # fmt: skip
    prepared = prepare(_lm(_jsonl(tmp_path / "a.jsonl", rows)), smollm2_tokenizer)
    decoded = dict(_decoded(smollm2_tokenizer, _examples(prepared)))
    assert len(decoded) == 4
    yes = (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nSay yes.<|im_end|>\n"
        "<|im_start|>assistant\nyes<|im_end|>\n"
    )
    assert decoded[yes] == "yes<|im_end|>\n"


def test_alpaca_without_a_chat_template_uses_alpacas_prompt(tmp_path, make_tokenizer):
    tokenizer = make_tokenizer(None)  # byte-level, no template
    rows = [{"instruction": "Double it.", "input": "21", "output": "42"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue"}]  # fmt: skip
    prepared = prepare(_lm(_jsonl(tmp_path / "a.jsonl", rows)), tokenizer)
    decoded = dict(_decoded(tokenizer, _examples(prepared)))
    with_input = (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nDouble it.\n\n### Input:\n21\n\n### Response:\n42<|im_end|>"
    )
    without = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue<|im_end|>"
    )
    assert decoded == {with_input: "42<|im_end|>", without: "Blue<|im_end|>"}


def test_sharegpt_json_maps_roles_and_trains_on_gpt_turns(tmp_path, smollm2_tokenizer):
    conversations = [
        [{"from": "system", "value": "Be terse."}, {"from": "human", "value": f"Hi {i}"},
         {"from": "gpt", "value": f"Hello {i}."}, {"from": "human", "value": "Bye"},
         {"from": "gpt", "value": "Ciao."}]
        for i in range(6)
    ]  # fmt: skip
    # role/content keys are tolerated (arrow then stores the messages as JSON)
    conversations.append(
        [{"role": "user", "content": "Hi 6"}, {"role": "assistant", "content": "Hello 6."}]
    )
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps([{"conversations": c, "id": i} for i, c in enumerate(conversations)])
    )
    prepared = prepare(_lm(path), smollm2_tokenizer)
    decoded = dict(_decoded(smollm2_tokenizer, _examples(prepared)))
    assert len(decoded) == 7
    first = (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi 0<|im_end|>\n"
        "<|im_start|>assistant\nHello 0.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\nCiao.<|im_end|>\n"
    )
    assert decoded[first] == "Hello 0.<|im_end|>\nCiao.<|im_end|>\n"
    last = SYSTEM_DEFAULT + (
        "<|im_start|>user\nHi 6<|im_end|>\n<|im_start|>assistant\nHello 6.<|im_end|>\n"
    )
    assert decoded[last] == "Hello 6.<|im_end|>\n"


def test_sharegpt_split_files_in_a_messages_column(tmp_path, tokenizer):
    # ShareGPT's from/value messages under the name `messages`, as train and test files
    for name, n in (("train", 6), ("test", 2)):
        rows = [{"messages": [{"from": "human", "value": f"{name} {i}"},
                              {"from": "gpt", "value": f"ok {name} {i}"}]} for i in range(n)]  # fmt: skip
        _jsonl(tmp_path / f"{name}.jsonl", rows)
    prepared = prepare(_lm(tmp_path), tokenizer)
    assert len(prepared.test) == 2 and len(prepared.train) + len(prepared.validation) == 6
    assert sorted(s for _, s in _decoded(tokenizer, prepared.test)) == [
        "ok test 0<|im_end|>\n",
        "ok test 1<|im_end|>\n",
    ]


def test_unknown_sharegpt_role_names_row_and_role(tmp_path, tokenizer):
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}] * 2
    rows.append(
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]}
    )
    path = tmp_path / "chat.jsonl"
    _jsonl(path, rows)
    with pytest.raises(DataError) as info:
        prepare(_lm(path), tokenizer)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("row 3 of chat.jsonl: unknown ShareGPT role 'bing' — ")


def test_forced_format_that_does_not_fit(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "q", "response": "a"}] * 3)
    with pytest.raises(DataError, match="qa.jsonl does not hold the sharegpt format"):
        prepare(_lm(path, format="sharegpt"), tokenizer)


def test_format_is_for_causal_lm_only(tmp_path, tokenizer):
    path = _jsonl(tmp_path / "reviews.jsonl", [{"text": "good", "label": "pos"}] * 3)
    config = TrainConfig(data=str(path), format="text")  # the default task: classification
    with pytest.raises(ConfigError, match="--format text is a causal-LM data format"):
        prepare(config, tokenizer)


def test_renamed_prompt_response_columns(tmp_path, tokenizer):
    rows = [{"question": f"q{i}", "answer": f"a{i}", "text": "ignored"} for i in range(5)]
    config = _lm(_jsonl(tmp_path / "qa.jsonl", rows), prompt_column="question",
                 response_column="answer")  # fmt: skip
    prepared = prepare(config, tokenizer)
    supervised = sorted(s for _, s in _decoded(tokenizer, _examples(prepared)))
    assert supervised == [f"a{i}<|im_end|>\n" for i in range(5)]
    assert set(prepared.raw["train"].column_names) == {"prompt", "response", "text"}
