"""A LoRA adapter as llama.cpp's adapter GGUF, applied to a base GGUF at load time.

What llama.cpp reads (src/llama-adapter.cpp): `general.type = adapter`, `adapter.type =
lora`, `adapter.lora.alpha`, and for each adapted matrix `<gguf tensor>.lora_a` (A, [r, in])
and `.lora_b` (B, [out, r]) named after the base tensor it adapts; it scales B A by
alpha / r with r read from each B, or by 1 when alpha is 0.

One alpha for the file: when every module's scaling is alpha / r (no rsLoRA, no
alpha_pattern) that alpha is written; otherwise each module's scaling is folded into its B
and alpha is written as 0, which gives every module exactly its own scaling.

llama.cpp's LoRA cannot express DoRA's magnitudes, trained base biases, adapted
embeddings or fully trained modules (modules_to_save): those are refused with one line
naming the part — `--format gguf` merges them into the model instead.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import torch

from lorakit.adapters.load import ReadAdapter
from lorakit.export.gguf_arch import (
    UnsupportedExportError,
    arch_of,
    module_name,
    rotary_heads,
    to_rotary_pairs,
)
from lorakit.export.gguf_file import encode, write_gguf
from lorakit.export.gguf_model import block_count


def check_expressible(read: ReadAdapter) -> None:
    """Refuse what llama.cpp's LoRA GGUF has no place for."""
    why = []
    if read.config.use_dora or any("magnitude" in p for p in read.parts.values()):
        why.append("DoRA magnitudes")
    if read.saved:
        why.append(f"fully trained modules (modules_to_save: {', '.join(sorted(read.saved))})")
    if any("bias" in p for p in read.parts.values()) or read.bias != "none":
        why.append("trained base biases")
    embeds = [m for m in read.parts if _is_embedding(read, m)]
    if embeds:
        why.append(f"adapted embeddings ({embeds[0]})")
    if read.task_type not in (None, "CAUSAL_LM"):
        why.append(f"a {read.task_type} head (llama.cpp runs causal LMs)")
    if why:
        raise UnsupportedExportError(
            f"gguf-lora cannot express {'; '.join(why)} of {read.path} — "
            "export the merged model with --format gguf instead"
        )


def _is_embedding(read: ReadAdapter, module: str) -> bool:
    keys = [k for k in read.tensors if k.endswith(("lora_embedding_A", "lora_embedding_B"))]
    return any(f".{module}.lora_embedding_" in f".{k}" for k in keys)


def lora_tensors(read: ReadAdapter, config) -> tuple[dict[str, torch.Tensor], float]:
    """({gguf name: tensor}, alpha to write) in llama.cpp's layout for the base `config`."""
    check_expressible(read)
    arch = arch_of(config)
    names = gguf.get_tensor_name_map(arch.enum, block_count(config))
    uniform = not read.config.use_rslora and len(set(read.alphas.values())) <= 1
    alpha = float(next(iter(read.alphas.values()))) if uniform and read.alphas else 0.0
    out = {}
    for module in sorted(read.ranks):
        A, B = read.parts[module]["A"], read.parts[module]["B"]
        if alpha == 0.0:
            B = B * read.scaling(module)
        heads = rotary_heads(config, module) if arch.rotary_pairs else None
        if heads is not None:
            B = to_rotary_pairs(B, heads)
        base = module_name(names, module)
        out[f"{base}.weight.lora_a"] = A
        out[f"{base}.weight.lora_b"] = B
    return out, alpha


def write_lora_gguf(read: ReadAdapter, config, path: Path, dtype: str = "f32") -> Path:
    """Write the adapter `read` for the base whose transformers config is `config`."""
    if dtype == "q8_0":
        raise UnsupportedExportError("gguf-lora: use --dtype f32, f16 or bf16 (q8_0 is for models)")
    tensors, alpha = lora_tensors(read, config)
    arch = arch_of(config)

    def fill(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(read.path.name)
        for name, tensor in tensors.items():
            data, kind = encode(tensor, dtype)
            writer.add_tensor(name, data, raw_dtype=kind)

    return write_gguf(path, arch.gguf_name, fill)
