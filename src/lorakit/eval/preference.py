"""Preference pairs scored: reward accuracy, margin, rewards and log-probs of a split (what
training reports before and after, and `lorakit eval` prints on preference data).

DPO's reference is the same model with its adapters switched off, or with only a frozen
adapter active (the SFT adapter a run started from): no second copy of the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from datasets import Dataset
from torch import nn

from lorakit.data import length_grouped_batches
from lorakit.data.preference import collate_pairs, pair_lengths
from lorakit.eval.preference_loss import Objective, pair_metrics, pair_scores, sequence_logps
from lorakit.lora import active_adapters, disable_adapters, set_adapter


@contextlib.contextmanager
def as_reference(model: nn.Module, reference: str | None) -> Iterator[None]:
    """Inside the block the model is DPO's reference: adapters off (None), or adapter
    `reference` alone; the active adapters are restored after."""
    if reference is None:
        with disable_adapters(model):
            yield
        return
    before = active_adapters(model)
    set_adapter(model, reference)
    try:
        yield
    finally:
        set_adapter(model, before)


@torch.no_grad()
def pair_logps(
    model: nn.Module, pairs: Dataset, pad_id: int, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs [n, 2], response token counts [n, 2]) of every pair (chosen, rejected),
    in the dataset's order, in fixed length-grouped batches. Eval mode: no dropout, so the
    same model gives the same numbers (DPO's reference log-probs are computed once, kept)."""
    model.eval()
    device = next(model.parameters()).device
    logps = torch.zeros(len(pairs), 2, dtype=torch.float32)
    counts = torch.zeros(len(pairs), 2, dtype=torch.long)
    for idx in length_grouped_batches(pair_lengths(pairs), batch_size, shuffle=False):
        batch = collate_pairs([pairs[i] for i in idx], pad_id)
        seq, n = sequence_logps(model, {k: v.to(device) for k, v in batch.items()})
        logps[idx] = seq.float().cpu().view(2, len(idx)).T
        counts[idx] = n.cpu().view(2, len(idx)).T
    return logps, counts


def reference_logps(
    model: nn.Module, pairs: Dataset, pad_id: int, reference: str | None, batch_size: int = 16
) -> torch.Tensor:
    """DPO's reference log-probs [n, 2] of every pair (see as_reference and pair_logps)."""
    with as_reference(model, reference):
        return pair_logps(model, pairs, pad_id, batch_size)[0]


def score_pairs(
    model: nn.Module,
    pairs: Dataset,
    pad_id: int,
    objective: Objective,
    ref_logps: torch.Tensor | None = None,
    batch_size: int = 16,
) -> dict:
    """The pair metrics of a split (pair_metrics' names, and `pairs`); DPO needs ref_logps
    (reference_logps of the same pairs)."""
    if len(pairs) == 0:
        return {"pairs": 0}
    logps, counts = pair_logps(model, pairs, pad_id, batch_size)
    flat = logps.T.reshape(-1)  # [2n]: every chosen, then every rejected
    ref = ref_logps.T.reshape(-1) if ref_logps is not None else None
    scores = pair_scores(objective, flat, counts.T.reshape(-1), ref)
    return {**pair_metrics(scores.sums()), "pairs": len(pairs)}
