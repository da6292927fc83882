"""The metrics of a prepared split: what training, `lorakit eval` and `lorakit compare` report.

A function of (model, tokenizer, data, task): no run, no config.
"""

from __future__ import annotations

from lorakit.data.prepare import Prepared
from lorakit.eval.passes import (
    chat_prompts_and_references,
    evaluate_classification,
    evaluate_generation,
    evaluate_perplexity,
)

GENERATION_EXAMPLES = 200  # generation metrics are slow; perplexity uses the whole split


def validation_metric(model, tokenizer, data: Prepared, task: str) -> float:
    """The number tracked during training: validation accuracy, or perplexity for causal LM."""
    pad = tokenizer.pad_token_id
    if task == "classification":
        scores = evaluate_classification(
            model, data.validation, data.labels, pad, latency_samples=0
        )
        return scores["accuracy"]
    return evaluate_perplexity(model, data.validation, pad)["perplexity"]


def split_metrics(model, tokenizer, data: Prepared, task: str, split: str = "test") -> dict:
    """Full metrics on a split: classification report, or perplexity + generation quality."""
    ds = getattr(data, split)
    pad = tokenizer.pad_token_id
    if task == "classification":
        return evaluate_classification(model, ds, data.labels, pad)
    out = evaluate_perplexity(model, ds, pad)
    raw = data.raw[split]
    n = min(len(raw), GENERATION_EXAMPLES)
    if n == 0:  # an empty split (a small data file): nothing to generate against
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
