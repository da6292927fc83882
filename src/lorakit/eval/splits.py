"""The metrics of a prepared split: what training, `lorakit eval` and `lorakit compare` report.

A function of (model, tokenizer, data, task): no run, no config.
"""

from __future__ import annotations

import json

from lorakit.data.prepare import Prepared
from lorakit.eval.passes import (
    chat_prompts_and_references,
    evaluate_classification,
    evaluate_generation,
    evaluate_perplexity,
)

GENERATION_EXAMPLES = 200  # generation metrics are slow; perplexity uses the whole split
# the metrics of an empty split (a data file too small to leave rows for it): nothing was
# scored, and no number pretends otherwise (an empty perplexity would read exp(0) = 1)
EMPTY = {"examples": 0}


def empty_split_notes(data: Prepared) -> list[str]:
    """What a run says about each held-out split that holds no example (its metrics: EMPTY)."""
    rows = sum(data.stats.sizes.values())
    return [
        f"note: the {split} split is empty ({rows:,} rows after deduplication are too few: a "
        f"row's split is decided by a hash of its text, about 1 in 10 goes to {split}) — its "
        f'metrics are skipped (metrics.json: "{split}": {json.dumps(EMPTY)}); for held-out '
        f"scores give more rows, or a directory with train and {split} files"
        for split in ("validation", "test")
        if len(getattr(data, split)) == 0
    ]


def validation_metric(model, tokenizer, data: Prepared, task: str) -> float | None:
    """The number tracked during training: validation accuracy, or perplexity for causal LM
    (None when the validation split is empty)."""
    if len(data.validation) == 0:
        return None
    pad = tokenizer.pad_token_id
    if task == "classification":
        scores = evaluate_classification(
            model, data.validation, data.labels, pad, latency_samples=0
        )
        return scores["accuracy"]
    return evaluate_perplexity(model, data.validation, pad)["perplexity"]


def split_metrics(model, tokenizer, data: Prepared, task: str, split: str = "test") -> dict:
    """Full metrics on a split: classification report, or perplexity + generation quality;
    EMPTY for an empty split."""
    ds = getattr(data, split)
    if len(ds) == 0:
        return dict(EMPTY)
    pad = tokenizer.pad_token_id
    if task == "classification":
        return evaluate_classification(model, ds, data.labels, pad)
    out = evaluate_perplexity(model, ds, pad)
    raw = data.raw[split]
    n = min(len(raw), GENERATION_EXAMPLES)
    if n == 0:  # no untokenized rows to generate against
        return out
    if "messages" in raw.column_names:
        prompts, refs = chat_prompts_and_references(tokenizer, raw.select(range(n))["messages"])
    elif {"prompt", "response"} <= set(raw.column_names):
        sub = raw.select(range(n))
        if tokenizer.chat_template:
            prompts, refs = chat_prompts_and_references(
                tokenizer,
                [
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                    for p, r in zip(sub["prompt"], sub["response"], strict=True)
                ],
            )
        else:
            prompts, refs = list(sub["prompt"]), list(sub["response"])
    else:
        return out
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs)
    out.update(
        evaluate_generation(model, tokenizer, prompts, refs, max_new_tokens=min(longest + 4, 128))
    )
    return out


def perplexity_metrics(model, tokenizer, data: Prepared, split: str) -> dict:
    """Perplexity alone (what training reports on causal-LM validation); EMPTY when empty."""
    ds = getattr(data, split)
    if len(ds) == 0:
        return dict(EMPTY)
    return evaluate_perplexity(model, ds, tokenizer.pad_token_id)
