"""Losses that compute only what is used: the LM head runs on labelled positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"])


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (body, head) if body is not None and head is not None else None


def causal_lm_loss(model: nn.Module, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over labelled positions (labels != -100); mean or sum.

    The decoder body runs on the whole batch, but the LM head (about 20% of a 135M
    model's compute, and a [tokens, vocab] fp32 tensor) only on the positions that have a
    label — prompts, padding and packing gaps cost nothing there.
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE  # [B, T-1]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = _body_and_head(model)
    if parts is None:  # not a transformers causal LM: fall back to the full forward
        logits = model(**inputs).logits[:, :-1][keep]
    else:
        body, head = parts
        hidden = body(**inputs, use_cache=False)[0][:, :-1]  # [B, T-1, H]
        logits = head(hidden[keep])  # [N, vocab], N = labelled positions
    return F.cross_entropy(logits.float(), labels[keep], reduction=reduction)


def loss_fn(task: str):
    return classification_loss if task == "classification" else causal_lm_loss
