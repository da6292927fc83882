"""Configs of `lorakit compare` (a sweep) and `lorakit rank-probe`.

Both hold the training fields every run of theirs shares (same model, data, steps, seed),
so that the runs differ only in what is being compared.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lorakit.config import Precision, StrictConfig, TrainConfig
from lorakit.errors import ConfigError

# Fields a sweep sets per run: they cannot also come in through `train`.
_SWEEP_SET = {"method", "r", "alpha", "targets", "rank_pattern", "output", "seed", "lr"}
_NEVER = {"resume", "overwrite"}


class SharedRunConfig(StrictConfig):
    """Training fields shared by every run (see TrainConfig for their meaning)."""

    model: str = Field(
        "minilm",
        description="Model every run starts from: alias, HF directory, .gguf file or cached hub id.",
    )
    task: Literal["classification", "causal-lm"] = Field(
        "classification", description="What the models learn."
    )
    data: str = Field("tweets", description="'tweets' or a CSV/JSON/JSONL/Parquet file or dir.")
    text_column: str | None = Field(None, description="Classification text column.")
    label_column: str | None = Field(None, description="Classification label column.")
    max_length: int = Field(128, gt=1, description="Tokens per example.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored with max_steps).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps per run.")
    batch_size: int = Field(16, gt=0, description="Examples per micro-batch.")
    max_train_samples: int | None = Field(None, gt=0, description="Training examples at most.")
    max_eval_samples: int | None = Field(None, gt=0, description="Evaluation examples at most.")
    seed: int = Field(
        0, description="Random seed; compare: of the first repetition (then seed+1, ...)."
    )
    lr: float | None = Field(
        None, gt=0, description="Learning rate of lora/dora/head runs (default 1e-3)."
    )
    alpha: float | None = Field(
        None,
        gt=0,
        description="LoRA alpha; default 2*r, so scaling = alpha/r is 2 at every rank "
        "and ranks are compared at the same update scale.",
    )
    device: str = Field("auto", description="auto, cpu or cuda.")
    precision: Precision = "auto"
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other TrainConfig field, applied to every run (e.g. {grad_accum: 2}).",
    )
    overwrite: bool = Field(
        False, description="Replace an output lorakit wrote (another sweep or run; nothing else)."
    )

    @field_validator("train")
    @classmethod
    def _valid_train_fields(cls, extra: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(extra) & (_SWEEP_SET | _NEVER | set(cls.model_fields)))
        if clash:
            raise ValueError(f"{', '.join(clash)} cannot be set under train (set per run or above)")
        try:
            TrainConfig(**extra)
        except ConfigError as exc:  # keep the inner message only, the outer one adds the fix
            msg = str(exc).removeprefix("invalid TrainConfig: ").rsplit(" — ", 1)[0]
            raise ValueError(msg) from None
        return extra

    def run_config(self, output: Path, **fields: Any) -> TrainConfig:
        """The TrainConfig of one run: the shared fields, `train` extras, then `fields`."""
        shared = self.model_dump(exclude={"train", "overwrite", "alpha"} | _OWN_FIELDS)
        values = {**shared, **self.train, "output": str(output), **fields}
        if values.get("method", "lora") in ("lora", "dora"):
            r = values.get("r", TrainConfig.model_fields["r"].default)
            values.setdefault("alpha", self.alpha if self.alpha is not None else 2 * r)
        return TrainConfig(**values)


class CompareConfig(SharedRunConfig):
    """`lorakit compare`: head-only, LoRA at several ranks and target sets, DoRA, full FT."""

    output: str = Field(
        "runs/compare",
        description="Sweep directory: runs/, report.md, plots (re-run the command to resume it).",
    )
    ranks: list[int] = Field(
        [1, 2, 4, 8, 16, 32, 64],
        description="LoRA ranks to train (a YAML list or comma-separated: 1,4,16).",
    )
    target_sets: dict[str, list[str] | str] | None = Field(
        None,
        description="Named target_modules sets. Default: 'attention' (the model's query/value "
        "layers, detected by name) and 'all-linear'.",
    )
    dora_rank: int | None = Field(8, gt=0, description="Rank of the DoRA run (None: no DoRA).")
    dora_targets: str | None = Field(
        None, description="The target set of the DoRA run (default: all-linear, else the last)."
    )
    include_full: bool = Field(
        True,
        description="Add a full fine-tuning run (not in a DPO sweep unless asked: DPO's "
        "reference is the model with its adapter off, which full fine-tuning has not).",
    )
    include_head: bool | None = Field(
        None, description="Add a head-only run (default: for classification only)."
    )
    full_lr: float | None = Field(
        None, gt=0, description="Learning rate of full fine-tuning (default 5e-5)."
    )
    seeds: int = Field(
        1, ge=1, description="Repetitions of every run (seed, seed+1, ...): mean ± std."
    )
    metric: (
        Literal[
            "accuracy",
            "macro_f1",
            "exact_match",
            "rouge_l",
            "perplexity",
            "reward_accuracy",
            "reward_margin",
        ]
        | None
    ) = Field(
        None,
        description="The score the findings rank by (default: accuracy; for causal-lm "
        "reward_accuracy in a preference sweep, else exact_match where measured, else "
        "perplexity).",
    )
    latency_samples: int = Field(32, gt=0, description="Test examples timed one at a time.")
    isolate: bool = Field(
        True,
        description="Train each run in a fresh process, so its peak memory is its own "
        "(on CPU the peak of a process never goes down).",
    )

    @field_validator("ranks")
    @classmethod
    def _positive_ranks(cls, ranks: list[int]) -> list[int]:
        if any(r <= 0 for r in ranks):
            raise ValueError(f"ranks must be positive, got {ranks}")
        return sorted(set(ranks))

    @field_validator("target_sets")
    @classmethod
    def _named_sets(cls, sets: dict | None) -> dict | None:
        for name, targets in (sets or {}).items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"target set name {name!r} must be letters, digits, _ . -")
            if isinstance(targets, list) and not targets:
                raise ValueError(f"target set {name!r} is empty")
        if sets is not None and not sets:
            raise ValueError("target_sets is empty (leave it out for the default sets)")
        return sets

    @model_validator(mode="after")
    def _dora_set_exists(self) -> CompareConfig:
        names = self.target_sets.keys() if self.target_sets else ("attention", "all-linear")
        if self.dora_targets is not None and self.dora_targets not in names:
            raise ValueError(f"dora_targets {self.dora_targets!r} is not one of {list(names)}")
        return self

    def dora_set(self, names: list[str]) -> str:
        return self.dora_targets or ("all-linear" if "all-linear" in names else names[-1])

    def head_included(self) -> bool:
        return self.include_head if self.include_head is not None else self.task == "classification"

    def full_included(self) -> bool:
        """A DPO sweep leaves full fine-tuning out unless include_full was set (then the
        run's own check refuses it, before anything trains)."""
        if self.train.get("objective") == "dpo" and "include_full" not in self.model_fields_set:
            return False
        return self.include_full


class RankProbeConfig(SharedRunConfig):
    """`lorakit rank-probe`: train at a high rank, read the rank each layer's update used."""

    output: str = Field("runs/rank-probe", description="Directory: runs, report.md, spectra.")
    rank: int = Field(64, gt=0, description="The probe run's (high) LoRA rank.")
    targets: list[str] | str = Field(
        "all-linear",
        description="target_modules of both runs: all-linear, module names (a YAML list or "
        "comma-separated: q_proj,v_proj) or a regex.",
    )
    energy: float = Field(
        0.9, gt=0, lt=1, description="Share of the update's energy the recommended r must hold."
    )
    quantile: float = Field(
        0.75, gt=0, le=1, description="The model-wide r covers this share of layers."
    )
    pattern: bool = Field(
        False, description="Also recommend a rank_pattern for layers needing another r."
    )
    validate_run: bool = Field(
        True, description="Train the recommendation and score it against the probe run."
    )
    against: str | None = Field(
        None,
        description="A `lorakit compare` output directory: the report also places the "
        "recommended rank among that sweep's measured ranks.",
    )


# Fields of the two subclasses that are not TrainConfig fields.
_OWN_FIELDS = (set(CompareConfig.model_fields) | set(RankProbeConfig.model_fields)) - set(
    TrainConfig.model_fields
)


def parse_ranks(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--ranks {value!r} is not a list of integers — e.g. 1,2,4,8") from None


def resolve(cls: type[SharedRunConfig], config_file: Path | None, flags: dict):
    """A YAML file of `cls` fields plus command-line flags (flags win) → a validated config."""
    from lorakit.yaml_config import resolve_config

    return resolve_config(cls, config_file, flags, {"ranks": parse_ranks})
