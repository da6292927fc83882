"""Pydantic configs. Every field is documented once, here; YAML files and CLI flags map onto them."""

from __future__ import annotations

import math
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

    def scaling_for(self, module_name: str) -> float:
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


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
    return f"invalid {cls.__name__}: " + "; ".join(parts)
