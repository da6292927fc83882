"""A quantized frozen base (the QLoRA idea): int8 or NF4 weights under full-precision adapters.

`quantize(model, "int8" | "nf4")` runs after LoRA injection. Every exact `nn.Linear` and
`nn.Embedding` whose weight is frozen (LoRA layers' `base_layer` included) is replaced by a
module with the same features, bias and forward that stores its weight as codes:

  int8  symmetric, one scale per output channel (per row):  W ≈ q * scale[:, None]
  nf4   4-bit NormalFloat (Dettmers et al. 2023): 16 quantiles of N(0, 1) in [-1, 1],
        one absmax per block of 64 weights, two 4-bit codes per byte.

Embeddings and the output head are int8 (per row) in both modes: a tied LM head shares the
embedding's int8 rows, and the logits are the most sensitive matmul of the model. Adapters,
modules_to_save, norms and anything trainable stay in full precision. The codes are
models/quant_codec.py, the modules models/quant_layers.py (they follow a small protocol
`lorakit.lora` reads by duck typing: `quant_type`, `lora_kind`, `codes`, `dequantized()`, no
`weight`, so merge and PiSSA's residual refuse a quantized base); `dequantize(model)` turns
them back into plain `nn.Linear` / `nn.Embedding`.

Plain torch, so the same code runs on CPU and CUDA. bitsandbytes' kernels are deliberately
not used: lorakit cannot test them offline, and the layout here is what `dequantize` and the
adapter math read.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.allocator import release_freed
from lorakit.errors import ConfigError
from lorakit.lora.heads import output_head
from lorakit.lora.layer import LoraLayer, is_quantized
from lorakit.lora.registry import lora_layers, set_module
from lorakit.lora.saved_module import ModulesToSave
from lorakit.models.head_input import contiguous_head_input
from lorakit.models.mmap_pages import own_remaining, page_out
from lorakit.models.quant_codec import quantize_int8, quantize_nf4
from lorakit.models.quant_layers import Int8Embedding, Int8Linear, NF4Linear

MODES = ("int8", "nf4")


def _frozen(module: nn.Module) -> bool:
    return not module.weight.requires_grad


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every exact nn.Linear / nn.Embedding with a frozen weight, outside
    modules_to_save. Exact types: subclasses (e.g. MultiheadAttention's out_proj) are read
    by their owners through `.weight`."""
    found, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip):
            continue
        if isinstance(module, ModulesToSave):
            skip.append(name + ".")
        elif type(module) is nn.Linear and _frozen(module):
            found.append((name, module))
        elif type(module) is nn.Embedding and _frozen(module) and module.max_norm is None:
            found.append((name, module))  # max_norm would renormalise the weight in place
    return found


def _output_head(model: nn.Module) -> nn.Module | None:
    """The LM head's base layer (what `quantize` stores as int8 in both modes), or None."""
    head = output_head(model)
    return head.base_layer if isinstance(head, LoraLayer) else head


@torch.no_grad()
def quantize(model: nn.Module, mode: str, *, inference: bool = False) -> nn.Module:
    """Replace the frozen base's Linear / Embedding weights by `mode` codes, in place.

    `inference`: the model only runs forward (generate, serve): its int8 Linears may run a
    few rows through torch's int8 kernel, bf16-rounded (models/int8_kernel.py). Training
    leaves it off, so its numbers never depend on how many rows a step has.

    Run it after `inject` (LoRA layers then wrap quantized bases) and before the optimizer
    is built. Returns `model`. Full-precision tensors that still point into a memory-mapped
    checkpoint file are copied out, so the file mapping — and the fp32 pages it kept
    resident — is released.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown quantization {mode!r} — use one of: {', '.join(MODES)}")
    for name, layer in lora_layers(model).items():
        if layer.merged:
            raise ConfigError(
                f"adapters {layer.merged} are merged into {name} — unmerge(model) before quantizing"
            )
    head = _output_head(model)
    targets = _targets(model)
    if not targets:
        raise ConfigError(
            "nothing to quantize: no frozen nn.Linear or nn.Embedding is left — inject LoRA "
            "first (it freezes the base), or requires_grad_(False) the weights to quantize"
        )
    grid = torch.bfloat16 if inference else None  # the int8 kernel's scales are bf16
    embeddings: dict[int, Int8Embedding] = {}  # id(fp weight) -> its int8 module
    for path, module in targets:
        if isinstance(module, nn.Embedding):
            new = Int8Embedding(*quantize_int8(module.weight, grid), module)
            embeddings[id(module.weight)] = new
            set_module(model, path, new)
            page_out(module.weight)
    for path, module in targets:
        if not isinstance(module, nn.Linear):
            continue
        tied = embeddings.get(id(module.weight))
        if tied is not None:  # a tied LM head reads the embedding's rows
            new = Int8Linear(bias=module.bias, tied_to=tied)
        elif mode == "int8" or module is head:
            new = Int8Linear(*quantize_int8(module.weight, grid), module.bias)
        else:
            packed, absmax = quantize_nf4(module.weight)
            new = NF4Linear(packed, absmax, module.in_features, module.out_features, module.bias)
        new.inference = inference
        set_module(model, path, new)
        page_out(module.weight)
    own_remaining(model)
    release_freed()  # the fp32 chunks read above would otherwise stay in the C heap
    contiguous_head_input(model)  # a replaced head lost load_model's hook
    return model


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Turn every quantized module back into a plain, frozen nn.Linear / nn.Embedding, in place.

    The weights are the dequantized codes (what training saw), so a merge afterwards gives
    exactly the model that was trained. A tied LM head is tied again. Returns `model`.
    """
    found = [(n, m) for n, m in model.named_modules() if is_quantized(m)]
    plain: dict[int, nn.Parameter] = {}  # id(quantized embedding) -> its new weight
    for path, module in found:
        if isinstance(module, Int8Embedding):
            new = nn.Embedding(
                module.num_embeddings,
                module.embedding_dim,
                padding_idx=module.padding_idx,
                norm_type=module.norm_type,
                scale_grad_by_freq=module.scale_grad_by_freq,
                sparse=module.sparse,
                _weight=module.dequantized(),
                _freeze=True,
            )
            plain[id(module)] = new.weight
            set_module(model, path, new)
    for path, module in found:
        if isinstance(module, Int8Embedding):
            continue
        tied = getattr(module, "tied_to", None)
        weight = plain.get(id(tied))  # the embedding's new weight: tied again
        if weight is None:
            weight = nn.Parameter(module.dequantized(), requires_grad=False)
        new = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        new.weight, new.bias = weight, module.bias
        set_module(model, path, new)
    contiguous_head_input(model)
    return model


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """path -> quantized module, for every one in the model."""
    return {n: m for n, m in model.named_modules() if is_quantized(m)}


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage counted once (tied weights)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
