"""save_adapter: one adapter of a model → a peft-format directory, written atomically."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lorakit.adapters.peft_format import CONFIG_NAME, PREFIX, WEIGHTS_NAME, lora_key, to_peft_config
from lorakit.atomic import atomic_dir
from lorakit.config import LoraConfig
from lorakit.errors import AdapterNotFoundError
from lorakit.lora.inject import _is_saved_module, adaptable_modules
from lorakit.lora.layer import LoraLayer
from lorakit.lora.registry import adapter_configs, named_lora_modules
from lorakit.lora.saved_module import ModulesToSave

# transformers head classes → peft task types (by class-name suffix; lora/ stays transformers-free)
_TASK_SUFFIXES = {
    "ForCausalLM": "CAUSAL_LM",
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "LMHeadModel": "CAUSAL_LM",  # GPT2LMHeadModel and kin
}


def infer_task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for s, t in _TASK_SUFFIXES.items() if name.endswith(s)), None)


def infer_base_name(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or None


def adapter_state(model: nn.Module, adapter: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors with peft key names, extra config fields) for one adapter.

    A PiSSA adapter is written as plain LoRA against the *original* base weight:
    W_final - W = s (B A - B0 A0) = s [B, -B0] [A; A0], a rank-2r adapter with the same scaling.
    """
    config = adapter_configs(model)[adapter]
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    fan_in_fan_out = False
    for path, module in named_lora_modules(model):
        if isinstance(module, LoraLayer) and adapter in module.adapters:
            ad = module.adapters[adapter]
            A, B, alpha = ad.A.detach(), ad.B.detach(), ad.alpha
            if ad.A0 is not None:
                A, B = torch.cat([A, ad.A0]), torch.cat([B, -ad.B0], dim=1)
                alpha = alpha * (math.sqrt(2) if ad.use_rslora else 2)
            tensors[lora_key(path, "A", module.kind)] = A
            tensors[lora_key(path, "B", module.kind)] = B
            if ad.magnitude is not None:
                tensors[lora_key(path, "magnitude", module.kind)] = ad.magnitude.detach()
            if config.bias == "lora_only" and getattr(module.base_layer, "bias", None) is not None:
                tensors[f"{PREFIX}{path}.base_layer.bias"] = module.base_layer.bias.detach()
            ranks[path], alphas[path] = A.shape[0], alpha
            fan_in_fan_out |= module.kind == "conv1d"
        elif isinstance(module, ModulesToSave) and adapter in module.copies:
            for name, p in module.copies[adapter].named_parameters():
                tensors[f"{PREFIX}{path}.{name}"] = p.detach()
    if config.bias == "all":
        for name, p in model.named_parameters():
            if name.endswith("bias") and ".original_module." not in name and ".copies." not in name:
                tensors[f"{PREFIX}{name}"] = p.detach()
    fields = to_peft_config(config, _target_modules(model, config, list(ranks)), fan_in_fan_out)
    fields.update(_patterns(config, ranks, alphas))
    return tensors, fields


def _target_modules(model: nn.Module, config: LoraConfig, paths: list[str]) -> Any:
    """What to write as target_modules: as given, except 'all-linear' is expanded (so any
    reader selects exactly these modules) to leaf names when those are unambiguous."""
    if config.target_modules != "all-linear":
        return config.target_modules
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    selected = [
        n
        for n in adaptable_modules(model)
        if any(n == leaf or n.endswith("." + leaf) for leaf in leaves)
        and not _is_saved_module(n, config.modules_to_save)
    ]
    return leaves if sorted(selected) == sorted(paths) else sorted(paths)


def _patterns(config: LoraConfig, ranks: dict[str, int], alphas: dict[str, float]) -> dict:
    """rank_pattern / alpha_pattern: kept as given unless ranks changed on save (PiSSA),
    in which case they are written per module so readers rebuild exactly these shapes."""
    if all(ranks[p] == config.rank_for(p) and alphas[p] == config.alpha_for(p) for p in ranks):
        return {}
    r = max(ranks.values())
    alpha = next(alphas[p] for p in ranks if ranks[p] == r)
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {re.escape(p): k for p, k in ranks.items() if k != r},
        "alpha_pattern": {re.escape(p): a for p, a in alphas.items() if a != alpha},
    }


def save_adapter(
    model: nn.Module,
    path: str | Path,
    adapter: str = "default",
    *,
    overwrite: bool = False,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write adapter `adapter` as a peft-format directory at `path` and return the path.

    The directory holds adapter_config.json and adapter_model.safetensors (plus any
    `extra_files`, {file name: JSON-able object}); it is built beside `path` and renamed
    into place, so a crash leaves either the old directory or the new one, never a mix.
    """
    if adapter not in adapter_configs(model):
        raise AdapterNotFoundError(
            f"no adapter named {adapter!r} — loaded adapters: {list(adapter_configs(model)) or 'none'}"
        )
    tensors, fields = adapter_state(model, adapter)
    fields["task_type"] = fields["task_type"] or infer_task_type(model)
    fields["base_model_name_or_path"] = fields["base_model_name_or_path"] or infer_base_name(model)
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
    return Path(path)
