import pytest
from datasets import Dataset, DatasetDict

from lorakit.data.formats import (
    IGNORE,
    chat_example,
    encode_chat,
    encode_classification,
    encode_prompt_response,
    encode_text,
    label_names,
    tweet_prompt,
    tweets_as_chat,
)
from lorakit.errors import DataError

EOS = 258  # <|im_end|> in the tiny tokenizer


def _supervised(tokenizer, ids, labels):
    return tokenizer.decode([t for t, y in zip(ids, labels, strict=True) if y != IGNORE])


def test_label_names_sorted_from_train():
    ds = DatasetDict(
        train=Dataset.from_dict({"label": ["pos", "neg", "neu", "neg"]}),
        test=Dataset.from_dict({"label": ["zzz"]}),
    )
    assert label_names(ds, "label") == ["neg", "neu", "pos"]
    assert label_names(Dataset.from_dict({"label": [10, 2, 2]}), "label") == ["2", "10"]


def test_encode_classification(minilm_tokenizer):
    ds = Dataset.from_dict({"text": ["Great car!", "meh " * 100], "label": ["pos", "neg"]})
    out = encode_classification(ds, minilm_tokenizer, ["neg", "pos"], max_length=16)
    assert out.column_names == ["input_ids", "labels"]
    assert out["labels"] == [1, 0]
    assert out["input_ids"][0][0] == 101 and out["input_ids"][0][-1] == 102  # [CLS] .. [SEP]
    assert len(out["input_ids"][1]) == 16
    with pytest.raises(DataError, match=r"labels \['neu'\] do not occur in the training data"):
        encode_classification(
            Dataset.from_dict({"text": ["x"], "label": ["neu"]}), minilm_tokenizer, ["neg", "pos"]
        )
    with pytest.raises(DataError, match="no column 'sentence'"):
        encode_classification(ds, minilm_tokenizer, ["neg", "pos"], text_column="sentence")


def test_encode_text_trains_on_every_token_and_ends_with_eos(tokenizer):
    out = encode_text(Dataset.from_dict({"text": ["abc", "x" * 50]}), tokenizer, max_length=10)
    assert out["input_ids"][0] == [*tokenizer("abc")["input_ids"], EOS]
    assert out["labels"] == out["input_ids"]
    assert len(out["input_ids"][1]) == 10 and EOS not in out["input_ids"][1]  # cut: no EOS


def test_prompt_response_masks_the_prompt(tokenizer):
    ds = Dataset.from_dict({"prompt": ["Q: 2+2?\nA:", "long " * 20], "response": [" 4", "x"]})
    out = encode_prompt_response(ds, tokenizer, max_length=40)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tokenizer.decode(ids) == "Q: 2+2?\nA: 4<|im_end|>"
    assert labels[:10] == [IGNORE] * 10 and labels[10] != IGNORE  # one token per prompt byte
    assert _supervised(tokenizer, ids, labels) == " 4<|im_end|>"
    assert len(out) == 1  # the second response was cut off entirely: dropped


def test_chat_masks_assistant_turns_only(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao."},
    ]
    ids, labels = chat_example(tokenizer, messages)
    text = tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\nCiao.<|im_end|>\n"
    )
    assert _supervised(tokenizer, ids, labels) == "Hello!<|im_end|>\nCiao.<|im_end|>\n"
    assert sum(y != IGNORE for y in labels) == len("Hello!\n") + 1 + len("Ciao.\n") + 1
    first = labels.index(next(y for y in labels if y != IGNORE))
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_prompt_response_with_chat_template_equals_chat(tokenizer):
    ds = Dataset.from_dict({"prompt": ["Hi"], "response": ["Hello"]})
    chat = Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
            ]
        }
    )
    a = encode_prompt_response(ds, tokenizer, use_chat_template=True)
    b = encode_chat(chat, tokenizer)
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    # the default system prompt of the template is in there, and not trained on
    assert tokenizer.decode(a["input_ids"][0]).startswith("<|im_start|>system\nYou are a helpful")


def test_chat_errors(tokenizer, make_tokenizer):
    with pytest.raises(DataError, match="no chat template"):
        chat_example(make_tokenizer(None), [{"role": "user", "content": "x"}])
    with pytest.raises(DataError, match="no assistant turn"):
        chat_example(tokenizer, [{"role": "user", "content": "x"}])
    with pytest.raises(DataError, match="must be {'role': ..., 'content': ...} objects"):
        chat_example(tokenizer, [{"from": "human", "value": "x"}])
    counting = make_tokenizer(
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(DataError, match="does not render conversation prefixes"):
        chat_example(counting, two)


def test_chat_dataset_drops_truncated_and_ignores_null_keys(tokenizer):
    messages = [
        [
            {"role": "user", "content": "x", "name": None},
            {"role": "assistant", "content": "y", "name": None},
        ],
        [
            {"role": "user", "content": "x" * 200, "name": None},
            {"role": "assistant", "content": "y", "name": "bot"},
        ],
    ]
    out = encode_chat(Dataset.from_dict({"messages": messages}), tokenizer, max_length=120)
    assert len(out) == 1 and "None" not in tokenizer.decode(out["input_ids"][0])


def test_tweets_instruction_format(tokenizer):
    assert tweet_prompt("I love it") == (
        "Classify the sentiment of this tweet as positive, neutral or negative.\n"
        "Tweet: I love it\nSentiment:"
    )
    ds = Dataset.from_dict({"text": ["I love it", "meh"], "sentiment": ["positive", "neutral"]})
    chats = tweets_as_chat(ds)
    assert chats.column_names == ["messages", "sentiment"]
    out = encode_chat(chats, tokenizer)
    assert _supervised(tokenizer, out["input_ids"][0], out["labels"][0]) == "positive<|im_end|>\n"
    assert tokenizer.decode(out["input_ids"][1]).endswith(
        "<|im_start|>user\nClassify the sentiment of this tweet as positive, neutral or negative.\n"
        "Tweet: meh\nSentiment:<|im_end|>\n<|im_start|>assistant\nneutral<|im_end|>\n"
    )
