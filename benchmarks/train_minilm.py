"""MiniLM sentiment LoRA: the course recipe (peft + Trainer) vs lorakit, side by side, one run.

    .venv/bin/python benchmarks/train_minilm.py [--course-samples 4000] [--lorakit-samples 12000]

Both train on lorakit's deduplicated tweets split and are scored on the same held-out
test tweets. The course recipe: peft LoRA r=4, alpha=32 on MiniLM, transformers Trainer,
padding to 128 tokens, batch 8, 1 epoch, lr 5e-4. lorakit: its defaults for the demo
(LoRA r=8 on all linear layers, length-grouped dynamic padding, batch 32, lr 2e-3).
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date

import torch


def course_recipe(samples: int, test_texts, test_labels, train_texts, train_labels) -> dict:
    import numpy as np
    import peft
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from lorakit.models.paths import alias_path

    path = alias_path("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=32, target_modules=["query", "value"]),
    )

    def encode(texts, labels):
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=128)
        return Dataset.from_dict({**enc, "labels": list(labels)})

    train = encode(train_texts[:samples], train_labels[:samples])
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=5e-4,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    preds = trainer.predict(encode(test_texts, test_labels)).predictions.argmax(-1)
    return {
        "seconds": seconds,
        "samples": len(train),
        "accuracy": float(np.mean(preds == np.array(test_labels))),
    }


def lorakit_recipe(samples: int) -> dict:
    from lorakit.config import TrainConfig
    from lorakit.demo import SENTIMENT
    from lorakit.train import train

    cfg = TrainConfig(
        **{**SENTIMENT, "max_train_samples": samples, "max_eval_samples": None},
        output=tempfile.mkdtemp() + "/run",
    )
    m = train(cfg, progress=False, log=lambda *a: None)
    return {
        "seconds": m["train_seconds"],
        "samples": m["train_samples"],
        "accuracy": m["test"]["accuracy"],
        "macro_f1": m["test"]["macro_f1"],
        "peak_memory_mb": m["peak_memory_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--course-samples", type=int, default=4000)
    parser.add_argument("--lorakit-samples", type=int, default=12000)
    args = parser.parse_args()
    from lorakit.data import load_tweets
    from lorakit.data.tweets import LABELS

    splits, _ = load_tweets()
    ids = {name: i for i, name in enumerate(LABELS)}
    train_texts, train_labels = (
        splits["train"]["text"],
        [ids[s] for s in splits["train"]["sentiment"]],
    )
    test_texts, test_labels = splits["test"]["text"], [ids[s] for s in splits["test"]["sentiment"]]

    ours = lorakit_recipe(args.lorakit_samples)
    course = course_recipe(args.course_samples, test_texts, test_labels, train_texts, train_labels)
    rows = {"course recipe (peft + Trainer)": course, "lorakit": ours}
    print(
        f"MiniLM sentiment LoRA, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {date.today()}, test = {len(test_texts)} tweets\n"
    )
    print("| recipe | train samples | train s | samples/s | test accuracy |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['samples']:,} | {r['seconds']:.0f} | {r['samples'] / r['seconds']:.1f} "
            f"| {r['accuracy']:.4f} |"
        )
    speedup = (ours["samples"] / ours["seconds"]) / (course["samples"] / course["seconds"])
    print(f"\nsamples/s ratio lorakit / course recipe: {speedup:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
