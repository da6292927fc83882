"""Fixtures shared by every test directory."""

from __future__ import annotations

import time

import pytest
import torch

from tiny_models import VOCAB


@pytest.fixture
def ids():
    torch.manual_seed(123)
    return torch.randint(3, VOCAB, (3, 9))


# -- tiny on-disk models and data for the training / CLI tests ---------------------------

POSITIVE = ["good", "great", "lovely", "happy", "fine"]
NEGATIVE = ["bad", "awful", "sad", "angry", "poor"]


def _write_bert(path, labels: list[str] | None = None, layers: int = 2):
    """A tiny random BERT classifier (2 labels, or `labels` as its id2label) + byte tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from tiny_tokenizer import VOCAB as BYTE_VOCAB
    from tiny_tokenizer import make_tokenizer

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=BYTE_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=256,
        num_labels=len(labels) if labels else 2,
        **(
            {"id2label": dict(enumerate(labels)), "label2id": {m: i for i, m in enumerate(labels)}}
            if labels
            else {}
        ),  # fmt: skip
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    make_tokenizer(chat_template=None).save_pretrained(path)
    return path


def _write_llama(path):
    from tiny_tokenizer import make_tokenizer
    from tiny_tokenizer import tiny_llama as byte_llama

    model = byte_llama()
    # A random LM head of std 0.02 bounds every logit below ~0.7 in size, so a frozen head
    # could never make a confident prediction; pretrained heads are far larger. Scale it so
    # LoRA on the body can learn, as on a real model.
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A tiny random BERT classifier + byte tokenizer, as an HF directory."""
    return _write_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def llama_model_dir(tmp_path_factory):
    """A tiny random Llama + byte tokenizer with SmolLM2's chat template, as an HF directory."""
    return _write_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory):
    """A learnable two-class CSV: the label is given away by one word of the text."""
    import csv
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "mood"])
        for i in range(240):
            pos = i % 2 == 0
            word = rng.choice(POSITIVE if pos else NEGATIVE)
            # the deciding word comes first: a tiny random BERT pools the first token
            writer.writerow([f"{word}, item {i}", "pos" if pos else "neg"])
    return path


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory):
    """prompt/response pairs with a learnable answer (the prompt's word, upper-cased)."""
    import json

    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    words = POSITIVE + NEGATIVE
    with open(path, "w") as f:
        for i in range(120):
            w = words[i % len(words)]
            f.write(json.dumps({"prompt": f"Shout {w} #{i}", "response": w.upper()}) + "\n")
    return path


@pytest.fixture(scope="session")
def prefs_jsonl(tmp_path_factory):
    """Preference pairs (TRL's prompt / chosen / rejected) with a learnable preference: the
    chosen answer shouts the prompt's word, the rejected one says it quietly."""
    import json

    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    words = POSITIVE + NEGATIVE
    with open(path, "w") as f:
        for i in range(160):
            w = words[i % len(words)]
            pair = {"prompt": f"Shout {w} #{i}", "chosen": w.upper(), "rejected": w}
            f.write(json.dumps(pair) + "\n")
    return path


# -- the real SmolLM2, converted once per test session ----------------------------------

PROBE = [{"role": "user", "content": "Is a self-driving car safe?"}]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """Convert the real SmolLM2 GGUF into a fresh session cache, keeping the GGUF-loaded
    model's logits on a probe chat to compare the cached copy against."""
    from lorakit.models import gguf_cache
    from lorakit.models.paths import alias_path

    root = tmp_path_factory.mktemp("smollm2-cache")
    loaded = {}
    real_load = gguf_cache.load_gguf

    def spy(path):
        loaded["model"], loaded["tokenizer"] = real_load(path)
        return loaded["model"], loaded["tokenizer"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAKIT_CACHE", str(root))
        mp.setattr(gguf_cache, "load_gguf", spy)
        start = time.perf_counter()
        directory = gguf_cache.cached_gguf_dir(alias_path("smollm2-135m"))
        seconds = time.perf_counter() - start
    model, tokenizer = loaded.pop("model"), loaded.pop("tokenizer")
    ids = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return {
        "root": root,
        "dir": directory,
        "seconds": seconds,
        "ids": ids,
        "logits": logits,
        "chat_template": tokenizer.chat_template,
    }
