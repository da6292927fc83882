"""AdamW with linear warmup + cosine decay; LoRA+ gives B a larger learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, lora_plus_ratio: float | None):
    """Trainable parameters in groups: decayed matrices, undecayed vectors (biases, norms,
    DoRA magnitudes), and, with LoRA+ (Hayou et al. 2024), the B matrices at lr * ratio."""
    decay, no_decay, lora_b = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if lora_plus_ratio and name.endswith(".B") and ".adapters." in name:
            lora_b.append(p)
        elif p.dim() < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    if lora_b:
        groups.append({"params": lora_b, "weight_decay": weight_decay, "lr": lr * lora_plus_ratio})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.0, lora_plus_ratio: float | None = None
):
    groups = param_groups(model, lr, weight_decay, lora_plus_ratio)
    if not groups:
        raise ValueError("no trainable parameters")
    # foreach kernels: one fused pass over all tensors instead of a Python loop per tensor
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """lr multiplier for step s: linear 0→1 over warmup, then cosine 1→min_ratio."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
