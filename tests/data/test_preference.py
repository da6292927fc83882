"""Preference pairs: reading (strings, conversations, implicit prompts), response-only label
masks for chosen and rejected, and SFT on prompt + chosen (real SmolLM2 tokenizer)."""

import json

import pytest
from datasets import Dataset

from lorakit.config import TrainConfig
from lorakit.data.formats import IGNORE
from lorakit.data.load import read_parts
from lorakit.data.preference import PreferenceExample, encode_preference, preference_examples
from lorakit.data.prepare import prepare
from lorakit.errors import DataError

ASSISTANT = "<|im_start|>assistant\n"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _supervised(tokenizer, ids, labels):
    assert all(y in (IGNORE, t) for t, y in zip(ids, labels, strict=True))
    return tokenizer.decode([t for t, y in zip(ids, labels, strict=True) if y != IGNORE])


def test_plain_string_pairs_from_a_file(tmp_path, smollm2_tokenizer):
    rows = [{"prompt": f"Is {i} even?", "chosen": "Yes." if i % 2 == 0 else "No.",
             "rejected": "Maybe."} for i in range(8)]  # fmt: skip
    part = read_parts(_jsonl(tmp_path / "pairs.jsonl", rows))["train"]
    examples = preference_examples(part.table, where=part.name)
    assert examples[3] == PreferenceExample("Is 3 even?", "No.", "Maybe.")
    assert not examples[3].conversational

    out = encode_preference(examples, smollm2_tokenizer, max_length=128)
    assert len(out) == 8
    assert out.column_names == [
        "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels",
    ]  # fmt: skip
    row = out[3]
    # strings go through the chat template (as prompt/response data does when there is one)
    text = smollm2_tokenizer.decode(row["chosen_input_ids"])
    assert text.endswith("<|im_start|>user\nIs 3 even?<|im_end|>\n" + ASSISTANT + "No.<|im_end|>\n")
    assert _supervised(smollm2_tokenizer, row["chosen_input_ids"], row["chosen_labels"]) == (
        "No.<|im_end|>\n"
    )
    assert _supervised(smollm2_tokenizer, row["rejected_input_ids"], row["rejected_labels"]) == (
        "Maybe.<|im_end|>\n"
    )
    # the prompt is the same tokens on both sides, masked on both
    prompt_len = row["chosen_labels"].index(next(y for y in row["chosen_labels"] if y != IGNORE))
    assert row["chosen_input_ids"][:prompt_len] == row["rejected_input_ids"][:prompt_len]
    assert row["rejected_labels"][:prompt_len] == [IGNORE] * prompt_len


def test_plain_pairs_without_the_template(smollm2_tokenizer):
    examples = [PreferenceExample("Q: 2+2?\nA:", " 4", " 5")]
    row = encode_preference(examples, smollm2_tokenizer, use_chat_template=False)[0]
    prompt_ids = smollm2_tokenizer("Q: 2+2?\nA:")["input_ids"]
    n = len(prompt_ids)
    assert row["chosen_input_ids"][:n] == prompt_ids
    assert row["chosen_labels"][:n] == [IGNORE] * n
    assert smollm2_tokenizer.decode(row["chosen_labels"][n:]) == " 4<|im_end|>"
    assert smollm2_tokenizer.decode(row["rejected_labels"][n:]) == " 5<|im_end|>"


def test_conversational_pairs_mask_the_prompt_history(tmp_path, smollm2_tokenizer):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},  # context: never trained on
        {"role": "user", "content": "Capital of France?"},
    ]
    rows = [{"prompt": history, "chosen": [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "assistant", "content": "Lyon."}]}] * 3  # fmt: skip
    part = read_parts(_jsonl(tmp_path / "conv.jsonl", rows))["train"]
    examples = preference_examples(part.table)
    assert examples[0].conversational and examples[0].prompt == history
    row = encode_preference(examples, smollm2_tokenizer)[0]
    assert _supervised(smollm2_tokenizer, row["chosen_input_ids"], row["chosen_labels"]) == (
        "Paris.<|im_end|>\n"
    )
    assert _supervised(smollm2_tokenizer, row["rejected_input_ids"], row["rejected_labels"]) == (
        "Lyon.<|im_end|>\n"
    )
    assert "Hello!" in smollm2_tokenizer.decode(row["chosen_input_ids"])


def test_implicit_prompts_are_the_shared_beginning():
    chats = Dataset.from_dict(
        {
            "chosen": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]],
            "rejected": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]],
        }
    )
    (example,) = preference_examples(chats)
    assert example.prompt == [{"role": "user", "content": "Q"}]
    assert example.chosen == [{"role": "assistant", "content": "A"}]
    # strings: TRL's rule, the space before the answers stays with them
    texts = Dataset.from_dict({"chosen": ["Human: hi Assistant: hello"],
                               "rejected": ["Human: hi Assistant: go away"]})  # fmt: skip
    (example,) = preference_examples(texts)
    assert example == PreferenceExample("Human: hi Assistant:", " hello", " go away")


def test_bad_rows_are_named(tmp_path):
    bad = Dataset.from_dict({"prompt": ["a", "b"], "chosen": ["x", None], "rejected": ["y", "z"]})
    with pytest.raises(DataError, match="row 2 of pairs.jsonl: chosen holds nothing"):
        preference_examples(bad, where="pairs.jsonl")
    no_answer = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "q"}]],
         "chosen": [[{"role": "user", "content": "not an answer"}]],
         "rejected": [[{"role": "assistant", "content": "b"}]]}
    )  # fmt: skip
    with pytest.raises(DataError, match="row 1 of the data: chosen has no assistant message"):
        preference_examples(no_answer)


def test_sft_on_a_preference_file_trains_on_prompt_and_chosen(tmp_path, smollm2_tokenizer):
    rows = [{"prompt": f"Name fruit {i}.", "chosen": f"Apple {i}.", "rejected": f"Rock {i}."}
            for i in range(10)]  # fmt: skip
    config = TrainConfig(task="causal-lm", data=str(_jsonl(tmp_path / "p.jsonl", rows)))
    prepared = prepare(config, smollm2_tokenizer)
    examples = [*prepared.train, *prepared.validation, *prepared.test]
    assert len(examples) == 10
    for e in examples:
        text = smollm2_tokenizer.decode(e["input_ids"])
        answer = _supervised(smollm2_tokenizer, e["input_ids"], e["labels"])
        i = text.split("Name fruit ")[1].split(".")[0]
        assert answer == f"Apple {i}.<|im_end|>\n" and "Rock" not in text
