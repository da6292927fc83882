"""Preference losses (DPO, ORPO), their rewards, and the statistics training and eval report.

A batch of n pairs is 2n sequences, the n chosen answers then the n rejected ones
(lorakit.data.preference.collate_pairs); a sequence's log-probability sums its response
tokens only (labels != -100: the prompt and padding never count). The formulas are TRL's
(tests/eval/test_preference_vs_trl.py checks them against its code):

    DPO   delta = (log p(c) - log p_ref(c)) - (log p(r) - log p_ref(r))
          loss  = -(1 - s) log sigmoid(beta delta) - s log sigmoid(-beta delta)
                  (s = label_smoothing: conservative DPO; s = 0: the sigmoid loss)
          rewards beta (log p - log p_ref), log-probs summed over the response
    ORPO  loss  = NLL(chosen response tokens) - lambda log sigmoid(log odds(c) - log odds(r)),
          odds(y) = p / (1 - p) of the per-token mean log-probability;
          rewards lambda * that mean, log-probs per-token means (as TRL's ORPOTrainer)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.eval.linear_ce import linear_token_nll
from lorakit.eval.loss import IGNORE, body_and_head
from lorakit.lora.layer import is_quantized

# what each logged statistic is the mean of, over pairs (sum name in PairScores.sums)
METRICS = (
    "reward_accuracy",
    "reward_margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logps",
    "rejected_logps",
)

# the sums PairScores.sums() returns
SUM_KEYS = ("pairs", "loss", *METRICS, "nll", "nll_tokens")


@dataclass(frozen=True)
class Objective:
    """A preference objective: dpo (beta, label_smoothing) or orpo (beta = its lambda)."""

    name: str
    beta: float
    label_smoothing: float = 0.0


@dataclass
class PairScores:
    """Per-pair tensors [n] of one batch (or split), and ORPO's NLL sum over chosen tokens."""

    losses: torch.Tensor  # DPO's loss, or ORPO's odds-ratio term (times lambda)
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    nll_sum: torch.Tensor | None = None  # ORPO: -sum of the chosen response tokens' log-probs
    nll_tokens: int = 0

    def sums(self) -> dict[str, float]:
        """Sums over the pairs (added across micro-batches and processes, then divided)."""
        margin = (self.chosen_rewards - self.rejected_rewards).detach()
        return {
            "pairs": float(len(self.losses)),
            "loss": float(self.losses.detach().sum()),
            "reward_accuracy": float((margin > 0).sum()),
            "reward_margin": float(margin.sum()),
            "chosen_reward": float(self.chosen_rewards.detach().sum()),
            "rejected_reward": float(self.rejected_rewards.detach().sum()),
            "chosen_logps": float(self.chosen_logps.detach().sum()),
            "rejected_logps": float(self.rejected_logps.detach().sum()),
            "nll": float(self.nll_sum.detach()) if self.nll_sum is not None else 0.0,
            "nll_tokens": float(self.nll_tokens),
        }


def pair_metrics(sums: dict[str, float]) -> dict[str, float | None]:
    """Means over pairs of PairScores.sums() (summed over batches); `preference_loss` is the
    objective's loss over all of them (ORPO's NLL a mean over all chosen response tokens)."""
    pairs = sums["pairs"]
    out = {name: sums[name] / pairs if pairs else None for name in METRICS}
    loss = sums["loss"] / pairs if pairs else None
    if loss is not None and sums["nll_tokens"]:
        loss += sums["nll"] / sums["nll_tokens"]
    out["preference_loss"] = loss
    return out


def sequence_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each sequence's labelled tokens, summed [R]; their count [R]).

    As causal_lm_loss: the decoder body on the whole batch, the LM head only at labelled
    positions, and a frozen plain or quantized head in chunks (no [tokens, vocab] logits).
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE  # [R, T-1]
    targets = labels[keep]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = body_and_head(model)
    if parts is None:  # the model's own forward (FSDP, logit transforms, not a transformers LM)
        logits = model(**inputs).logits[:, :-1][keep]
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
    else:
        body, head = parts
        hidden = body(**inputs, use_cache=False)[0][:, :-1][keep]  # [N, H]
        if type(head) is nn.Linear and not any(p.requires_grad for p in head.parameters()):
            nll = linear_token_nll(hidden, head.weight, targets, head.bias)
        elif is_quantized(head) and head.lora_kind == "linear":
            nll = linear_token_nll(hidden, head, targets, head.bias)
        else:  # a head that trains (full / head methods) or carries an adapter
            nll = F.cross_entropy(head(hidden).float(), targets, reduction="none")
    rows = keep.nonzero()[:, 0]  # the sequence of each labelled position, in keep's order
    sums = torch.zeros(keep.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, -nll)
    return sums, keep.sum(1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen rewards, rejected rewards) from summed log-probs [n]."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing)
    if label_smoothing:
        losses = losses - F.logsigmoid(-logits) * label_smoothing
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


def odds_ratio_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO's (per-pair -lambda log sigmoid(log odds ratio), chosen rewards, rejected rewards)
    from per-token mean log-probs [n]."""
    chosen, rejected = chosen.float(), rejected.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return -lam * F.logsigmoid(log_odds), lam * chosen.detach(), lam * rejected.detach()


def pair_scores(
    objective: Objective,
    logps: torch.Tensor,
    counts: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
) -> PairScores:
    """The objective's PairScores from 2n sequences' summed log-probs and token counts (and,
    for DPO, the reference's summed log-probs of the same 2n sequences)."""
    n = len(logps) // 2
    if objective.name == "dpo":
        if ref_logps is None:
            raise ValueError("DPO needs the reference log-probs")
        losses, chosen_r, rejected_r = dpo_loss(
            logps[:n],
            logps[n:],
            ref_logps[:n],
            ref_logps[n:],
            objective.beta,
            objective.label_smoothing,
        )
        return PairScores(losses, chosen_r, rejected_r, logps[:n], logps[n:])
    mean = logps / counts.clamp(min=1)
    losses, chosen_r, rejected_r = odds_ratio_loss(mean[:n], mean[n:], objective.beta)
    return PairScores(
        losses, chosen_r, rejected_r, mean[:n], mean[n:], -logps[:n].sum(), int(counts[:n].sum())
    )
