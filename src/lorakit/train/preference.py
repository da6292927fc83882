"""Preference objectives in a training run (--objective dpo / orpo): the checks before any
work, batches of pairs, DPO's reference log-probs (each computed once), the step loss with
the statistics train_log.csv records, and the held-out scores before and after.

The reference is the model itself: the adapter switched off, or the frozen copy of
--init-adapter (train/method.py), so no second model is loaded. A pair's reference
log-probs are computed in the step that first uses it and kept (two floats per pair, saved
in checkpoints, so a resumed run uses the same numbers): measured on SmolLM2-135M (CPU, 4
pairs of ~100 tokens), the reference forward is ~4.0 s of a 13.3 s step, so every epoch
after the first is ~30% faster, and the first costs what computing it in every step would.
Computing them all up front instead costs the same per pair but delays the first step by a
full pass over the data, and a run shorter than an epoch pays for pairs it never uses.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from lorakit.adapters import read_adapter
from lorakit.config import TrainConfig
from lorakit.data import IGNORE, length_grouped_batches
from lorakit.data.preference import collate_pairs, pair_lengths
from lorakit.errors import ConfigError
from lorakit.eval.preference import as_reference, reference_logps, score_pairs
from lorakit.eval.preference_loss import SUM_KEYS, Objective, pair_scores, sequence_logps
from lorakit.train import distributed
from lorakit.train.method import REFERENCE

EVAL_BATCH = 16  # pairs per batch when scoring a held-out split


def check_objective(config: TrainConfig) -> None:
    """Refuse, before any work, a run its objective or --init-adapter cannot do."""
    if config.init_adapter is not None:
        _check_init_adapter(config)
    if config.objective == "sft":
        return
    flag = f"--objective {config.objective}"
    if config.task != "causal-lm":
        raise ConfigError(
            f"{flag} tunes a causal LM on chosen / rejected answers; a {config.task} model "
            "has none — add --task causal-lm with preference data, or drop --objective"
        )
    if config.packing:
        raise ConfigError(
            f"{flag} scores each pair's chosen and rejected answer as two whole sequences of "
            "one batch, and packing would mix other documents into their rows — drop --packing"
        )
    if config.objective != "dpo":
        return
    if config.method not in ("lora", "dora"):
        raise ConfigError(
            f"--objective dpo with --method {config.method}: DPO's reference is the model with "
            "its adapter switched off, and this method trains the base weights themselves — "
            "use --method lora or dora, or --objective orpo (no reference)"
        )
    if config.init == "pissa" and config.init_adapter is None:
        raise ConfigError(
            "--objective dpo with --init pissa: PiSSA moves the top singular directions out "
            "of the base weights, so the model with its adapter off is not the starting model "
            "DPO's reference must be — use --init gaussian or kaiming, or --init-adapter"
        )


def _check_init_adapter(config: TrainConfig) -> None:
    if config.method not in ("lora", "dora"):
        raise ConfigError(
            f"--init-adapter with --method {config.method}: an adapter continues as an "
            "adapter — use --method lora (or dora for a DoRA adapter)"
        )
    read = read_adapter(config.init_adapter)  # one-line errors for a missing or bad directory
    if read.task_type not in (None, "CAUSAL_LM") and config.task == "causal-lm":
        raise ConfigError(
            f"--init-adapter {config.init_adapter} was trained for {read.task_type}, not a "
            "causal LM — start from a causal-LM adapter"
        )
    if read.config.use_dora != (config.method == "dora"):
        kind = "a DoRA" if read.config.use_dora else "a plain LoRA"
        fix = "add --method dora" if read.config.use_dora else "drop --method dora"
        raise ConfigError(f"--init-adapter {config.init_adapter} is {kind} adapter — {fix}")


def objective_of(config: TrainConfig) -> Objective:
    if config.objective == "dpo":
        return Objective("dpo", config.beta, config.label_smoothing)
    return Objective("orpo", config.orpo_lambda)


class PairTraining:
    """What a preference run adds to the loop: its batches, loss, counts and scores."""

    def __init__(self, config: TrainConfig, pairs: dict[str, Dataset], pad_id: int):
        self.config, self.pairs, self.pad_id = config, pairs, pad_id
        self.objective = objective_of(config)
        dpo = config.objective == "dpo"
        self.reference = REFERENCE if dpo and config.init_adapter is not None else None
        n = len(pairs["train"])
        # DPO's reference log-probs of the training pairs (chosen, rejected), kept once known
        self.train_ref = torch.zeros(n, 2)
        self.known = torch.zeros(n, dtype=torch.bool)
        self.held_out_ref: dict[str, torch.Tensor] = {}  # split -> [n, 2]

    @property
    def dpo(self) -> bool:
        return self.objective.name == "dpo"

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """What a checkpoint keeps (the reference log-probs known so far), so a resumed run
        uses the numbers the uninterrupted one would."""
        return {"train_ref": self.train_ref, "known": self.known} if self.dpo else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.dpo and state and state["train_ref"].shape == self.train_ref.shape:
            self.train_ref, self.known = state["train_ref"].clone(), state["known"].clone()

    def groups(self, epoch: int) -> list[list[int]]:
        lengths = pair_lengths(self.pairs["train"])
        return length_grouped_batches(
            lengths, self.config.batch_size, seed=self.config.seed + epoch
        )

    def make(self, idx: list[int]) -> dict:
        """A micro-batch of training pairs. group_index: the pairs of the whole micro-batch
        (the loop sets it to every process's under torchrun)."""
        train = self.pairs["train"]
        batch = collate_pairs([train[i] for i in idx], self.pad_id)
        batch["pair_index"] = batch["group_index"] = torch.tensor(idx)
        return batch

    def _train_reference(self, model, batch: dict) -> torch.Tensor:
        """The reference log-probs [2n] of a micro-batch's pairs: computed in the step the
        first time the pairs come up (a no-grad forward in eval mode, the adapter off or the
        frozen copy alone), kept for every later epoch. Under torchrun every process learns
        what each computed: their caches stay one, and so do their decisions to compute."""
        own = batch["pair_index"].cpu()
        if not bool(self.known[batch["group_index"].cpu()].all()):
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), as_reference(model, self.reference):
                    logps, _ = sequence_logps(model, batch)
            finally:
                model.train(was_training)
            values = logps.float().cpu().view(2, -1).T  # [n, 2]
            sent = ([], values[:0]) if "stand_in" in batch else (own.tolist(), values)
            for idx, got in distributed.all_gather_object(sent):
                new = ~self.known[idx]  # the first value computed for a pair is its value
                self.train_ref[torch.tensor(idx, dtype=torch.long)[new]] = got[new]
                self.known[idx] = True
        return self.train_ref[own].T.reshape(-1).to(batch["input_ids"].device)

    def _reference(self, model, pairs: Dataset) -> torch.Tensor:
        was_training = model.training
        try:
            return reference_logps(model, pairs, self.pad_id, self.reference, EVAL_BATCH)
        finally:
            model.train(was_training)

    @staticmethod
    def terms(batch: dict) -> list[int]:
        """What the loss is a mean over: pairs, and (ORPO's NLL) chosen response tokens."""
        if "stand_in" in batch:
            return [0, 0]
        n = len(batch["input_ids"]) // 2
        return [n, int((batch["labels"][:n, 1:] != IGNORE).sum())]

    @staticmethod
    def zero_stats() -> dict[str, float]:
        # every process sums the same keys, one that ran only stand-ins too
        return dict.fromkeys(SUM_KEYS, 0.0)

    @staticmethod
    def samples(batch: dict) -> int:
        return 0 if "stand_in" in batch else len(batch["input_ids"]) // 2

    def loss(self, model, batch: dict, totals: list[int], parts: int):
        """(this micro-batch's share of the step's loss, its PairScores.sums()). `totals`: the
        pairs and chosen tokens the loss is a mean over (under torchrun, every process's)."""
        ref = self._train_reference(model, batch) if self.dpo else None
        logps, counts = sequence_logps(model, batch)
        scores = pair_scores(self.objective, logps, counts, ref)
        loss = scores.losses.sum() / max(totals[0], 1)
        if scores.nll_sum is not None:
            loss = loss + scores.nll_sum / max(totals[1], 1)
        return loss / parts, scores.sums()

    def scores(self, model, split: str) -> dict:
        """The pair metrics of a held-out split (DPO: its reference computed once)."""
        pairs = self.pairs[split]
        ref = None
        if self.dpo and len(pairs):
            if split not in self.held_out_ref:
                self.held_out_ref[split] = self._reference(model, pairs)
            ref = self.held_out_ref[split]
        # the reference's batches: at the start, when the model is its reference, rewards are 0
        return score_pairs(model, pairs, self.pad_id, self.objective, ref, EVAL_BATCH)
