"""Target matching (peft's rules) and injection of LoRA layers into any torch model."""

from __future__ import annotations

import re

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import ConfigError, TargetNotFoundError
from lorakit.lora.heads import output_head_names
from lorakit.lora.init import init_adapter
from lorakit.lora.layer import Adapter, LoraLayer, layer_kind
from lorakit.lora.registry import adapter_configs, lora_modules, set_adapter, set_module
from lorakit.lora.saved_module import ModulesToSave


def adaptable_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """name -> (module, kind) for every module that can carry LoRA, in `named_modules`
    order, wrappers' insides skipped — not walked at all: a model holding many adapters has
    thousands of modules inside its wrappers, and a server attaches adapters often."""
    found: dict[str, tuple[nn.Module, str]] = {}
    seen: set[int] = set()

    def walk(name: str, module: nn.Module) -> None:
        if id(module) in seen:  # a shared module: its first name only, as named_modules
            return
        seen.add(id(module))
        if isinstance(module, LoraLayer):
            found[name] = (module, module.kind)
            return
        if isinstance(module, ModulesToSave):
            return
        if (kind := layer_kind(module)) is not None:
            found[name] = (module, kind)
        for child, sub in module._modules.items():
            if sub is not None:
                walk(f"{name}.{child}" if name else child, sub)

    walk("", model)
    return found


def _matches(patterns: list[str] | str, name: str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return name in patterns or any(name.endswith("." + p) for p in patterns)


def _is_saved_module(name: str, modules_to_save: list[str] | None) -> bool:
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in modules_to_save or [])


def find_targets(model: nn.Module, config: LoraConfig) -> dict[str, tuple[nn.Module, str]]:
    """The modules `config` selects, by peft's matching rules."""
    candidates = adaptable_modules(model)
    if config.target_modules == "all-linear":
        heads = set(output_head_names(model, config.task_type))
        selected = {
            n: v for n, v in candidates.items() if v[1] in ("linear", "conv1d") and n not in heads
        }
    else:
        selected = {n: v for n, v in candidates.items() if _matches(config.target_modules, n)}
    if config.exclude_modules:
        selected = {n: v for n, v in selected.items() if not _matches(config.exclude_modules, n)}
    return {n: v for n, v in selected.items() if not _is_saved_module(n, config.modules_to_save)}


def _no_match_message(model: nn.Module, config: LoraConfig) -> str:
    suffixes: list[str] = []
    for name in adaptable_modules(model):
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in suffixes:
            suffixes.append(leaf)
    hint = ", ".join(suffixes[:10]) or "none (the model has no Linear, Conv1D or Embedding layer)"
    return (
        f"target_modules={config.target_modules!r} matched no module — "
        f"set target_modules to some of these names: {hint}"
    )


def _saved_module_targets(model: nn.Module, names: list[str] | None) -> dict[str, nn.Module]:
    found = {}
    for name in names or []:
        hits = [
            (n, m)
            for n, m in model.named_modules()
            if (n == name or n.endswith("." + name))
            and ".original_module" not in n
            and ".copies." not in n
        ]
        if not hits:
            raise TargetNotFoundError(
                f"modules_to_save entry {name!r} matched no module — use a module name of the model"
            )
        found.update(hits)
    return found


def inject(
    model: nn.Module, config: LoraConfig | None = None, adapter: str = "default"
) -> nn.Module:
    """Wrap the modules `config` selects with LoRA adapter `adapter`, in place; returns `model`.

    Freezes every parameter except the new adapter's (A, B, DoRA magnitude), its
    modules_to_save copies and the biases `config.bias` asks for. The new adapter becomes
    the active one. Everything is checked before anything is changed, so an error leaves
    the model as it was.
    """
    config = config or LoraConfig()
    if not isinstance(adapter, str) or not adapter or "." in adapter:
        raise ConfigError(f"adapter name must be a non-empty string without dots, got {adapter!r}")
    configs = adapter_configs(model)
    if adapter in configs:
        raise ConfigError(
            f"adapter {adapter!r} already exists — delete_adapter() it or pick another name"
        )
    targets = find_targets(model, config)
    if not targets:
        raise TargetNotFoundError(_no_match_message(model, config))
    saved = _saved_module_targets(model, config.modules_to_save)

    for name, (module, kind) in targets.items():
        layer = module if isinstance(module, LoraLayer) else LoraLayer(module, kind)
        if layer is not module:
            set_module(model, name, layer)
        weight = layer.base_tensor  # a quantized base's codes: adapters are fp32 then
        ad = Adapter(
            layer.in_features,
            layer.out_features,
            config.rank_for(name),
            config.alpha_for(name),
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
            dropout=config.dropout,
            dtype=_adapter_dtype(weight.dtype),
            device=weight.device,
        )
        init_adapter(layer, ad, config.init)
        layer.add_adapter(adapter, ad)
    for name, module in saved.items():
        wrapper = module if isinstance(module, ModulesToSave) else ModulesToSave(module)
        if wrapper is not module:
            set_module(model, name, wrapper)
        wrapper.add_copy(adapter)

    configs[adapter] = config
    freeze_except(model, adapter)
    set_adapter(model, adapter)
    return model


def _adapter_dtype(base: torch.dtype) -> torch.dtype:
    # Adapters stay in full precision on a half-precision base (as peft's autocast_adapter_dtype):
    # A and B are small, and fp16 updates of them lose the signal.
    return base if base in (torch.float32, torch.float64) else torch.float32


def freeze_except(model: nn.Module, adapter: str) -> None:
    """requires_grad only for `adapter`'s parameters, its saved modules and chosen biases."""
    for p in model.parameters():
        p.requires_grad_(False)
    bias = adapter_configs(model)[adapter].bias
    for module in lora_modules(model):
        if isinstance(module, LoraLayer) and adapter in module.adapters:
            for p in module.adapters[adapter].parameters():
                p.requires_grad_(True)
            if bias == "lora_only" and getattr(module.base_layer, "bias", None) is not None:
                module.base_layer.bias.requires_grad_(True)
        elif isinstance(module, ModulesToSave) and adapter in module.copies:
            for p in module.copies[adapter].parameters():
                p.requires_grad_(True)
    if bias == "all":
        for name, p in model.named_parameters():
            if name.endswith("bias") and ".original_module." not in name and ".copies." not in name:
                p.requires_grad_(True)
