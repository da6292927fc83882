"""Attention for half-precision models on a CPU: torch's SDPA with q, k and v upcast to fp32.

torch 2.13's CPU flash-attention backward is several times slower in bf16 than in fp32
(measured on an AMX Xeon, fwd + bwd at MiniLM's shape 32 x 12 heads x 48 tokens x 32:
90.9 ms in bf16, 13.8 in fp32, 16.9 with the upcast; in a MiniLM LoRA step it took 46% of
the time in bf16 against 6% in fp32). The projections around it stay bf16: only q, k, v go
up to fp32 for the attention itself, and its output comes back down to bf16.

Registered with transformers' attention interface under NAME (with the sdpa mask), so a
model opts in per instance (`use_fp32_attention`) and no other model in the process
changes. `load_model` opts in every bf16/fp16 model, so training, `eval`, `generate` and
`serve` compute attention the same way (a metric logged in training is the one `eval`
reproduces); on CUDA the function is torch's SDPA unchanged.
"""

from __future__ import annotations

import torch

NAME = "lorakit_sdpa_fp32"


def _attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    half = query.dtype
    if half in (torch.bfloat16, torch.float16) and query.device.type == "cpu":
        mask = attention_mask
        if mask is not None and mask.is_floating_point():
            mask = mask.float()
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), mask, **kwargs
        )
        return out.to(half), weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_fp32_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model that runs torch's SDPA to the fp32-upcast SDPA; True if it
    did (models on eager or another implementation, or not transformers', are left alone)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not hasattr(model, "set_attn_implementation"):
        return False
    _register()
    model.set_attn_implementation(NAME)
    return uses_fp32_attention(model)


def uses_fp32_attention(model: torch.nn.Module) -> bool:
    """Whether `model` runs the fp32-upcast SDPA (`use_fp32_attention` switched it)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME
