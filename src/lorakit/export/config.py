"""`lorakit export` settings: one pydantic model; the command's flags are generated from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lorakit.config import StrictConfig

Format = Literal["gguf", "gguf-lora", "transformers", "peft"]


class ExportConfig(StrictConfig):
    """Take an adapter (or a base model alone) to the runtimes people deploy on."""

    format: Format = Field(
        "gguf",
        description="gguf: the merged model as one llama.cpp file; gguf-lora: the adapter as a "
        "llama.cpp LoRA file for its base GGUF; transformers: the merged safetensors directory; "
        "peft: a clean adapter copy checked against vLLM's rules.",
    )
    adapter: str | None = Field(None, description="Adapter directory (gguf: optional).")
    model: str | None = Field(
        None,
        description="Base model (default: the one the adapter records: its lorakit training "
        "config, else base_model_name_or_path).",
    )
    output: str | None = Field(
        None,
        description="Output file (.gguf) or directory (transformers, peft); with --ollama, "
        "default: inside that directory.",
    )
    dtype: Literal["f32", "f16", "bf16", "q8_0"] | None = Field(
        None, description="GGUF tensor type (default: f16 for gguf, f32 for gguf-lora)."
    )
    ollama: str | None = Field(
        None,
        description="Also write an Ollama Modelfile (FROM, ADAPTER, TEMPLATE, stop) into this "
        "directory, with the GGUF files.",
    )
    merge: bool = Field(
        False,
        description="gguf-lora: when the adapter has parts llama.cpp's LoRA cannot carry (DoRA, "
        "embeddings, modules_to_save), write the merged model GGUF instead of refusing.",
    )
    dequantize: bool = Field(
        False,
        description="Adapter trained with --quantize: merge into the base as training saw it.",
    )
    overwrite: bool = Field(
        False, description="Replace an existing output lorakit exported (nothing else)."
    )

    @model_validator(mode="after")
    def _needs_inputs(self) -> ExportConfig:
        if self.adapter is None and self.format != "gguf":
            raise ValueError(f"--format {self.format} needs --adapter DIR")
        if self.adapter is None and self.model is None:
            raise ValueError("give --adapter DIR, or --model NAME to export a base model alone")
        if self.output is None and self.ollama is None:
            raise ValueError("give --output (or --ollama DIR)")
        if self.ollama is not None and self.format not in ("gguf", "gguf-lora"):
            raise ValueError("--ollama needs --format gguf or gguf-lora")
        return self

    def resolved_dtype(self) -> str:
        return self.dtype or ("f32" if self.format == "gguf-lora" else "f16")
