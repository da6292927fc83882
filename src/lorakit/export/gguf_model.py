"""A causal LM (merged or not) as one GGUF file llama.cpp loads without lorakit."""

from __future__ import annotations

from pathlib import Path

import gguf
import torch

from lorakit.export.gguf_arch import (
    UnsupportedExportError,
    arch_of,
    tensor_name,
    to_gguf_layout,
    write_hparams,
)
from lorakit.export.gguf_file import DTYPES, encode, write_gguf
from lorakit.export.gguf_vocab import copy_tokenizer_fields, write_tokenizer


def block_count(config) -> int:
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def write_model_gguf(
    model: torch.nn.Module,
    tokenizer,
    path: Path,
    dtype: str = "f16",
    source_gguf: Path | None = None,
    name: str | None = None,
) -> Path:
    """Write `model` (a transformers causal LM, adapters merged) and its tokenizer to `path`.

    `source_gguf`: the GGUF file the base was read from; its tokenizer fields are copied so
    llama.cpp tokenizes as it does for that file. Tensors are written in `dtype` (vectors f32).
    """
    config = model.config
    arch = arch_of(config)
    names = gguf.get_tensor_name_map(arch.enum, block_count(config))
    state = model.state_dict()
    tensors = {}
    tied = _tied_head(model)
    if arch.tied_output and not tied and model.get_output_embeddings() is not None:
        raise UnsupportedExportError(
            f"GGUF {arch.gguf_name}: llama.cpp uses the token embedding as the output matrix, "
            "but this model's output head differs from it (an adapter on lm_head?) — export "
            "--format transformers instead"
        )
    for hf_name, tensor in state.items():
        if hf_name in tied:
            continue  # llama.cpp reads a missing output matrix as the token embedding
        gguf_name = tensor_name(names, hf_name)
        if gguf_name is not None:
            tensors[gguf_name] = to_gguf_layout(arch, config, hf_name, tensor)

    def fill(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or getattr(config, "name_or_path", "") or arch.gguf_name)
        writer.add_file_type(DTYPES[dtype][1])
        write_hparams(writer, config, arch)
        if source_gguf is not None:
            copy_tokenizer_fields(writer, source_gguf)
        else:
            write_tokenizer(writer, tokenizer, _vocab_rows(model))
        quantized = False
        for gguf_name, tensor in tensors.items():
            data, kind = encode(tensor, dtype)
            quantized |= kind in (gguf.GGMLQuantizationType.Q8_0,)
            writer.add_tensor(gguf_name, data, raw_dtype=kind)
        if quantized:
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    return write_gguf(path, arch.gguf_name, fill)


def _tied_head(model: torch.nn.Module) -> set[str]:
    """State-dict name of the output head when it is the input embedding's own storage."""
    out, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or out.weight.data_ptr() != embed.weight.data_ptr():
        return set()
    return {f"{name}.weight" for name, module in model.named_modules() if module is out}


def _vocab_rows(model: torch.nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[0]
