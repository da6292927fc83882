"""Evaluation passes: a model (with or without adapter) over a tokenized split → metrics;
batched greedy generation and its latency."""

from __future__ import annotations

import math

import torch
from datasets import Dataset

from lorakit.data import collate, length_grouped_batches, lengths_of
from lorakit.eval.loss import IGNORE, causal_lm_loss
from lorakit.eval.measure import Timer, peak_memory_mb, percentile
from lorakit.eval.metrics import classification_metrics, generation_metrics, perplexity


def _batches(ds: Dataset, batch_size: int, pad_id: int, device):
    lengths = lengths_of(ds)
    for idx in length_grouped_batches(lengths, batch_size, shuffle=False):
        batch = collate([ds[i] for i in idx], pad_id)
        yield idx, {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_classification(
    model,
    ds: Dataset,
    labels: list[str],
    pad_id: int,
    batch_size: int = 64,
    latency_samples: int = 32,
) -> dict:
    model.eval()
    device = next(model.parameters()).device
    preds = [0] * len(ds)
    timer = Timer(device)
    with timer:
        for idx, batch in _batches(ds, batch_size, pad_id, device):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
                preds[i] = p
    out = classification_metrics(ds["labels"], preds, labels)
    out["examples_per_s"] = len(ds) / max(timer.seconds, 1e-9)
    out.update(_latency(model, ds, pad_id, latency_samples))
    out["peak_memory_mb"] = peak_memory_mb(device)
    return out


def _latency(model, ds: Dataset, pad_id: int, n: int) -> dict:
    """Per-example latency (batch of one), p50 / p95 in milliseconds."""
    device = next(model.parameters()).device
    times = []
    for i in range(min(n, len(ds))):
        batch = {k: v.to(device) for k, v in collate([ds[i]], pad_id).items()}
        with Timer(device) as t:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        times.append(t.seconds * 1000)
    return {"latency_p50_ms": percentile(times, 50), "latency_p95_ms": percentile(times, 95)}


@torch.no_grad()
def evaluate_perplexity(model, ds: Dataset, pad_id: int, batch_size: int = 16) -> dict:
    """Perplexity over the labelled tokens (the LM head runs at those positions only)."""
    model.eval()
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    for _, batch in _batches(ds, batch_size, pad_id, device):
        nll += causal_lm_loss(model, batch, reduction="sum").item()
        tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
    if tokens == 0:  # nothing labelled (an empty split): no perplexity, not exp(0) = 1
        return {"perplexity": math.nan, "eval_loss": math.nan, "eval_tokens": 0}
    return {
        "perplexity": perplexity(nll, tokens),
        "eval_loss": nll / max(tokens, 1),
        "eval_tokens": tokens,
    }


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    on_token=None,
) -> tuple[list[str], list[float]]:
    """Greedy completions of already-rendered prompts; also per-prompt latency in ms."""
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # generation continues at the right edge of every row
    outputs, latencies = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(
            device
        )
        with Timer(device) as t:
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
        latencies += [t.seconds * 1000 / len(chunk)] * len(chunk)
    return [o.strip() for o in outputs], latencies


def chat_prompts_and_references(tokenizer, rows: list[list[dict]]) -> tuple[list[str], list[str]]:
    """Split conversations at their last assistant turn: (rendered prompt, reference answer)."""
    prompts, refs = [], []
    for messages in rows:
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(
            tokenizer.apply_chat_template(
                messages[:last], tokenize=False, add_generation_prompt=True
            )
        )
        refs.append(messages[last]["content"])
    return prompts, refs


def evaluate_generation(
    model, tokenizer, prompts: list[str], references: list[str], max_new_tokens: int = 32
) -> dict:
    predictions, latencies = generate_texts(model, tokenizer, prompts, max_new_tokens)
    out = generation_metrics(references, predictions)
    out["latency_p50_ms"] = percentile(latencies, 50)
    out["latency_p95_ms"] = percentile(latencies, 95)
    out["samples"] = [
        {"reference": r, "prediction": p}
        for r, p in list(zip(references, predictions, strict=True))[:5]
    ]
    return out


def finite(metrics: dict) -> dict:
    """JSON-safe copy: NaN / inf become None."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(metrics)
