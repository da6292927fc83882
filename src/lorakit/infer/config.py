"""Options of the inference commands: classify, generate, chat and merge.

`json_schema_extra={"argument": True}` makes a field a positional argument on the command line
(cli_options); a field without a default is required.
"""

from __future__ import annotations

from pydantic import Field

from lorakit.config import Precision, Quantize, StrictConfig

_ADAPTER = "Adapter directory."


class ClassifyConfig(StrictConfig):
    texts: list[str] = Field(description="Texts to classify.", json_schema_extra={"argument": True})
    model: str = Field("minilm", description="Base model.")
    adapter: str | None = Field(None, description="Classification adapter directory.")
    precision: Precision = "auto"
    quantize: Quantize = "none"


class GenerateConfig(StrictConfig):
    prompt: str = Field(description="The prompt.", json_schema_extra={"argument": True})
    model: str = Field("smollm2-135m", description="Base model.")
    adapter: str | None = Field(None, description=_ADAPTER)
    max_tokens: int = Field(128, gt=0, description="New tokens at most.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Top-p (nucleus) sampling: the likeliest tokens up to this total probability.",
    )
    seed: int | None = Field(None, description="Seed of the sampling (same seed, same text).")
    chat_template: bool = Field(True, description="Wrap the prompt as a user turn.")
    precision: Precision = "auto"
    quantize: Quantize = "none"


class ChatConfig(StrictConfig):
    model: str = Field("smollm2-135m", description="Base model.")
    adapter: str | None = Field(None, description=_ADAPTER)
    system: str | None = Field(None, description="System prompt.")
    max_tokens: int = Field(256, gt=0, description="New tokens per reply at most.")
    precision: Precision = "auto"
    quantize: Quantize = "none"


class MergeConfig(StrictConfig):
    adapter: str = Field(description=_ADAPTER)
    output: str = Field(description="Directory for the merged model.")
    model: str = Field("minilm", description="Base model the adapter was trained on.")
    overwrite: bool = Field(
        False, description="Replace an existing output lorakit wrote (nothing else)."
    )
    dequantize: bool = Field(
        False,
        description="Adapter trained with --quantize: merge into the base as training saw it "
        "(quantized, then dequantized) instead of the full-precision base.",
    )
