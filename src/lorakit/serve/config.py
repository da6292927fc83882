"""`lorakit serve` settings: one pydantic model, flags map onto it."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lorakit.config import Precision, Quantize, StrictConfig

ADAPTER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # what a served adapter may be called


class ServeConfig(StrictConfig):
    model: str = Field("smollm2-135m", description="The causal LM every generation uses.")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="Generation adapters loaded at start: name -> directory."
    )
    classifier: str | None = Field(None, description="A classification model for /v1/classify.")
    classifier_adapters: dict[str, str] = Field(
        default_factory=dict, description="Classification adapters: name -> directory."
    )
    served_model_name: str | None = Field(
        None, description="The base model's id in the API (default: the --model value's name)."
    )
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port (0: any free port).")
    adapter_dirs: list[str] = Field(
        default_factory=list,
        description="Directories runtime-loaded adapters may come from (none: runtime loading off).",
    )
    max_batch_size: int = Field(32, ge=1, description="Sequences decoded together at most.")
    max_loras: int = Field(
        64, ge=1, description="Generation adapters in the per-row bank at once (then LRU eviction)."
    )
    max_cpu_loras: int | None = Field(
        None,
        ge=1,
        description="Adapters kept read in memory, bank included (default: twice --max-loras); "
        "the rest are read from disk again when needed.",
    )
    prefix_cache_mb: float = Field(
        256.0,
        ge=0,
        description="Memory for the keys and values of shared prompt prefixes (0: no reuse).",
    )
    max_queue: int = Field(256, ge=1, description="Waiting requests at most (then 429).")
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask.")
    max_prompt_tokens: int = Field(4096, ge=1, description="Longest prompt in tokens.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body.")
    max_classify_inputs: int = Field(256, ge=1, description="Texts per /v1/classify call.")
    request_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds a generation request may take in all, queue included (then 408).",
    )
    stall_timeout: float = Field(
        120.0,
        gt=0,
        description="/health answers 503 when the engine has work and has made no step for this long.",
    )
    api_key_env: str = Field(
        "LORAKIT_API_KEY",
        description="Environment variable holding the API key (unset: open; set but empty: refused).",
    )
    page: str | None = Field(None, description="An HTML file served at / (e.g. a chat page).")
    feedback_db: str | None = Field(
        None,
        description="SQLite file POST /v1/feedback stores ratings in (default: feedback.sqlite3 "
        "in lorakit's cache); created on the first feedback, never over another file.",
    )
    device: str = Field("auto", description="auto, cpu or cuda.")
    precision: Precision = "auto"
    quantize: Quantize = "none"

    @model_validator(mode="after")
    def _tiers(self):
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})"
                " — the memory tier holds the bank's adapters too"
            )
        return self

    @property
    def cpu_loras(self) -> int:
        return self.max_cpu_loras or 2 * self.max_loras

    @field_validator("adapters", "classifier_adapters")
    @classmethod
    def _names(cls, adapters: dict[str, str]) -> dict[str, str]:
        import re

        bad = [n for n in adapters if not re.fullmatch(ADAPTER_NAME, n)]
        if bad:
            raise ValueError(f"adapter names must be letters, digits, . _ - (got {bad})")
        return adapters
