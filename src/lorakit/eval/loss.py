"""Losses that compute only what is used: the LM head runs on labelled positions only.

Training minimises them; evaluation reports them (perplexity is exp of the LM loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.device import is_sharded
from lorakit.eval.linear_ce import linear_cross_entropy
from lorakit.lora.heads import output_head
from lorakit.lora.layer import is_quantized

IGNORE = -100
# config fields of models whose forward rescales or caps the head's output (Gemma 2/3, Cohere, ...)
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier_scale",
)


def classification_loss(model: nn.Module, batch: dict, reduction: str = "mean") -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction=reduction)


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    config = getattr(model, "config", None)
    if any(getattr(config, k, None) for k in _LOGIT_TRANSFORMS):
        return None  # the model changes its logits after the head: only its own forward is right
    if is_sharded(model):
        return None  # FSDP: only the model's own forward gathers its embeddings and head
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    head = output_head(model)
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
    parts = body_and_head(model)
    if parts is None:  # not a transformers causal LM: fall back to the full forward
        logits = model(**inputs).logits[:, :-1][keep]
        return F.cross_entropy(logits.float(), labels[keep], reduction=reduction)
    body, head = parts
    hidden = body(**inputs, use_cache=False)[0][:, :-1][keep]  # [N, H], N = labelled positions
    if type(head) is nn.Linear:  # a plain head: the [N, vocab] logits never exist in full
        return linear_cross_entropy(hidden, head.weight, labels[keep], head.bias, reduction)
    if is_quantized(head) and head.lora_kind == "linear":
        # a quantized (frozen) head: dequantized a block of rows at a time, logits chunked
        return linear_cross_entropy(hidden, head, labels[keep], head.bias, reduction)
    return F.cross_entropy(head(hidden).float(), labels[keep], reduction=reduction)


def loss_fn(task: str):
    return classification_loss if task == "classification" else causal_lm_loss
