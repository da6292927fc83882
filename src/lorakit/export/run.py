"""`lorakit export`: one function per format, all refusing bad input before any work."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.adapters import read_adapter, read_config
from lorakit.errors import ConfigError
from lorakit.export.config import ExportConfig
from lorakit.export.gguf_arch import UnsupportedExportError, arch_of
from lorakit.export.gguf_file import check_output
from lorakit.models.load import ModelSource, model_dir, resolve_model


def export(config: ExportConfig) -> list[Path]:
    """Write what `config` asks for; returns the files / directories written."""
    model = config.model or base_of(config.adapter)
    if config.format == "transformers":
        from lorakit.infer.merge import merge_to_directory

        out = merge_to_directory(
            model, config.adapter, config.output, config.overwrite, config.dequantize
        )
        return [out]
    if config.format == "peft":
        from lorakit.export.peft_copy import write_peft_copy

        return [write_peft_copy(config.adapter, config.output, config.overwrite, model)]
    return _gguf(config, model)


def base_of(adapter: str | None) -> str:
    """The base model an adapter names: lorakit's training record first (it keeps the name
    the user gave, e.g. an alias), else peft's base_model_name_or_path."""
    directory = Path(adapter)
    record = directory / "lorakit_train_config.json"
    if record.is_file():
        try:
            name = json.loads(record.read_text(encoding="utf-8")).get("model")
        except ValueError:
            name = None
        if isinstance(name, str) and name:
            return name
    name = read_config(directory).get("base_model_name_or_path")
    if not name:
        raise ConfigError(f"{adapter} does not name its base model — pass --model NAME")
    return name


def _gguf(config: ExportConfig, model: str) -> list[Path]:
    lora = config.format == "gguf-lora"
    default_name = "adapter.gguf" if lora else "model.gguf"
    output = Path(config.output) if config.output else Path(config.ollama) / default_name
    check_output(output, config.overwrite)
    source = resolve_model(model)
    if config.ollama is not None:  # refused before any work: an existing file, a template
        from lorakit.export.ollama import chat_turns, check_modelfile
        from lorakit.models.load import load_tokenizer

        check_modelfile(config.ollama, config.overwrite)
        chat_turns(load_tokenizer(model_dir(source)))
    dtype = config.resolved_dtype()
    read = read_adapter(config.adapter) if config.adapter else None
    if read is not None and read.task_type not in (None, "CAUSAL_LM"):
        raise UnsupportedExportError(
            f"GGUF export is for causal LMs; {config.adapter} is a {read.task_type} adapter — "
            "use --format transformers"
        )
    base_config = _base_config(source)
    arch_of(base_config)  # an architecture llama.cpp cannot run: refused before loading it
    if lora:
        from lorakit.export.gguf_lora import check_expressible

        try:
            check_expressible(read)
        except UnsupportedExportError:
            if not config.merge:
                raise
            lora, dtype = False, config.dtype or "f16"  # --merge: the whole model instead
    if lora:
        from lorakit.export.gguf_lora import write_lora_gguf

        written = [write_lora_gguf(read, base_config, output, dtype)]
    else:
        written = [_write_model(model, config.adapter, source, output, dtype, config.dequantize)]
    if config.ollama is not None:
        written += _ollama(config, model, source, output if lora else None, output)
    return written


def _ollama(config, model, source: ModelSource, adapter_gguf, output) -> list[Path]:
    """The Modelfile, and for an adapter on a base not read from a GGUF, that base as GGUF."""
    from lorakit.export.ollama import write_modelfile
    from lorakit.models.load import load_tokenizer

    directory, written = Path(config.ollama), []
    model_gguf = output
    if adapter_gguf is not None:
        model_gguf = source.path if source.is_gguf else directory / "base.gguf"
        if not source.is_gguf:
            check_output(model_gguf, config.overwrite)
            written.append(_write_model(model, None, source, model_gguf, "f16", False))
    tokenizer = load_tokenizer(model_dir(source))
    modelfile = write_modelfile(directory, model_gguf, adapter_gguf, tokenizer, config.overwrite)
    return [*written, modelfile]


def _base_config(source: ModelSource):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir(source), local_files_only=True)


def _write_model(model, adapter, source: ModelSource, output: Path, dtype, dequantize) -> Path:
    from lorakit.export.gguf_model import write_model_gguf
    from lorakit.infer.merge import merged_model

    plain, tokenizer = merged_model(model, adapter, dequantize)
    source_gguf = source.path if source.is_gguf else None
    # general.name: llama.cpp adjusts special tokens by the family it sees named there
    name = Path(source.name).stem if source.kind in ("dir", "gguf") else source.name
    return write_model_gguf(plain, tokenizer, output, dtype, source_gguf, name=name)
