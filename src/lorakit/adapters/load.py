"""load_adapter: a peft- or lorakit-written adapter directory → a named adapter on the model.

Everything is read and checked (every key, every shape) before the model is touched, so
a bad file raises a LorakitError and leaves the model exactly as it was.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lorakit.adapters.peft_format import (
    CONFIG_NAME,
    PICKLE_WEIGHTS_NAME,
    UNSUPPORTED_FIELDS,
    WEIGHTS_NAME,
    Key,
    from_peft_config,
    parse_key,
)
from lorakit.config import LoraConfig
from lorakit.errors import (
    AdapterFormatError,
    AdapterMismatchError,
    ConfigError,
    LorakitError,
    UnsupportedAdapterError,
)
from lorakit.lora.inject import adaptable_modules, adapter_configs, inject
from lorakit.lora.layer import LoraLayer, linear_shape
from lorakit.lora.manage import active_adapters, set_adapter
from lorakit.lora.saved_module import ModulesToSave


def read_config(path: Path) -> dict:
    file = path / CONFIG_NAME
    if not path.is_dir():
        raise AdapterFormatError(
            f"adapter directory {path} does not exist — pass a directory written by save_adapter or peft"
        )
    if not file.is_file():
        raise AdapterFormatError(
            f"{path} has no {CONFIG_NAME} — is it a peft/lorakit adapter directory?"
        )
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(
            f"{file} is not valid JSON ({exc}) — re-save the adapter"
        ) from None
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{file} must hold a JSON object — re-save the adapter")
    peft_type = raw.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise UnsupportedAdapterError(
            f"{file}: peft_type {peft_type!r} is not supported — lorakit reads LORA adapters"
        )
    for field in UNSUPPORTED_FIELDS:
        if raw.get(field) not in (None, False, [], {}, ""):
            raise UnsupportedAdapterError(
                f"{file}: {field}={raw[field]!r} is not supported by lorakit — retrain without it"
            )
    return raw


def read_weights(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    file = path / WEIGHTS_NAME
    if file.is_file():
        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterFormatError(
                f"{file} is truncated or corrupted ({exc}) — re-save or re-download it"
            ) from None
    pickled = path / PICKLE_WEIGHTS_NAME
    if pickled.is_file():
        if not allow_pickle:
            raise AdapterFormatError(
                f"{path} holds only {PICKLE_WEIGHTS_NAME} (a pickle) — convert it to safetensors, "
                "or pass allow_pickle=True to read it with torch.load(weights_only=True)"
            )
        try:
            return torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds here; all mean "unreadable file"
            raise AdapterFormatError(f"{pickled} could not be read safely ({exc})") from None
    raise AdapterFormatError(f"{path} has no {WEIGHTS_NAME} — is it a complete adapter directory?")


def _module_dims(module: nn.Module, kind: str) -> tuple[int, int]:
    base = module.base_layer if isinstance(module, LoraLayer) else module
    out, n_in = linear_shape(base, kind)
    return n_in, out


def _plan(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor], where: Path):
    """Check every key and shape; return ({module: {part: tensor}}, {saved module: {param: tensor}})."""
    base_name = config.base_model_name_or_path or "unknown"
    hint = f"was the adapter trained on another base model (its base: {base_name})?"
    saved_names = list(config.modules_to_save or [])
    lora: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, dict[str, torch.Tensor]] = {}
    candidates = adaptable_modules(model)
    modules = dict(model.named_modules())
    for key, tensor in tensors.items():
        parsed: Key | None = parse_key(key, saved_names)
        if parsed is None:
            raise AdapterFormatError(
                f"{where}: unexpected tensor {key!r} — not a LoRA key peft or lorakit writes"
            )
        if parsed.part == "original":
            continue
        if parsed.part == "saved":
            saved.setdefault(parsed.module, {})[parsed.param] = tensor
        else:
            lora.setdefault(parsed.module, {})[parsed.part] = tensor
    for path, parts in lora.items():
        if {"A", "B"} <= parts.keys():
            if path not in candidates:
                raise AdapterMismatchError(
                    f"adapter has weights for {path!r}, which this model lacks — {hint}"
                )
            module, kind = candidates[path]
            n_in, out = _module_dims(module, kind)
            A, B = parts["A"], parts["B"]
            r = A.shape[0]
            if (
                A.dim() != 2
                or B.dim() != 2
                or tuple(A.shape) != (r, n_in)
                or tuple(B.shape) != (out, r)
            ):
                raise AdapterMismatchError(
                    f"{path}: adapter has A {list(A.shape)} and B {list(B.shape)}, but the layer needs "
                    f"A [r, {n_in}] and B [{out}, r] — {hint}"
                )
            if r != config.rank_for(path):
                raise AdapterFormatError(
                    f"{path}: tensors have rank {r} but adapter_config.json gives r={config.rank_for(path)} — fix r / rank_pattern"
                )
            if config.use_dora != ("magnitude" in parts):
                raise AdapterFormatError(
                    f"{path}: use_dora={config.use_dora} but DoRA magnitude is {'missing' if config.use_dora else 'present'}"
                )
            if "magnitude" in parts and tuple(parts["magnitude"].shape) != (out,):
                raise AdapterMismatchError(
                    f"{path}: DoRA magnitude {list(parts['magnitude'].shape)} != [{out}] — {hint}"
                )
        elif {"A", "B"} & parts.keys():
            raise AdapterFormatError(
                f"{where}: {path} has only one of lora_A / lora_B — the file is incomplete"
            )
        target = modules.get(path)
        base = target.base_layer if isinstance(target, LoraLayer) else target
        if "bias" in parts:
            bias = getattr(base, "bias", None)
            if bias is None or bias.shape != parts["bias"].shape:
                raise AdapterMismatchError(
                    f"{path}: adapter carries a bias {list(parts['bias'].shape)} the model's layer does not fit — {hint}"
                )
        if "base_weight" in parts:
            weight = getattr(base, "weight", None)
            same = weight is not None and weight.shape == parts["base_weight"].shape
            if not same or not torch.allclose(
                weight.detach().float().cpu(), parts["base_weight"].float(), atol=1e-6
            ):
                raise AdapterMismatchError(
                    f"{path}: adapter carries its own base weights (resized vocabulary?) that differ from this model's — "
                    "load it on the base it was trained with"
                )
    for path, params in saved.items():
        module = modules.get(path)
        if isinstance(module, ModulesToSave):
            module = module.original_module
        if module is None:
            raise AdapterMismatchError(
                f"adapter saves module {path!r}, which this model lacks — {hint}"
            )
        own = dict(module.named_parameters())
        for name, tensor in params.items():
            if name not in own or own[name].shape != tensor.shape:
                have = list(own[name].shape) if name in own else "nothing"
                raise AdapterMismatchError(
                    f"{path}.{name}: adapter has {list(tensor.shape)}, the model has {have} — {hint}"
                )
    return {p: v for p, v in lora.items() if "A" in v}, lora, saved


def _free_name(model: nn.Module, path: Path) -> str:
    taken = adapter_configs(model)
    if "default" not in taken:
        return "default"
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.resolve().name) or "adapter"
    name, i = stem, 1
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    return name


def load_adapter(
    model: nn.Module,
    path: str | Path,
    adapter: str | None = None,
    *,
    trainable: bool = False,
    allow_pickle: bool = False,
) -> str:
    """Load an adapter directory onto `model` as `adapter` (default: "default", or the
    directory's name if taken) and return the name.

    The new adapter becomes active only if no adapter was active. It is frozen unless
    `trainable`. Pickle weights (adapter_model.bin) are read only with `allow_pickle`.
    """
    path = Path(path)
    raw = read_config(path)
    tensors = read_weights(path, allow_pickle)
    try:
        config = LoraConfig(**from_peft_config(raw))
    except ConfigError as exc:
        raise AdapterFormatError(f"{path / CONFIG_NAME}: {exc}") from None
    lora, parts_by_module, saved = _plan(model, config, tensors, path)
    if not lora and not saved:
        raise AdapterFormatError(
            f"{path / WEIGHTS_NAME} holds no LoRA weights — re-save the adapter"
        )
    name = adapter if adapter is not None else _free_name(model, path)
    if name in adapter_configs(model):
        raise ConfigError(
            f"adapter {name!r} already exists — delete_adapter() it or pass another name"
        )

    # Other adapters keep their trainability; the base stays frozen, as after inject.
    grads = {p: p.requires_grad for p in _adapter_parameters(model)}
    before = active_adapters(model)
    shape_config = config.model_copy(
        update=dict(
            target_modules=list(lora),
            exclude_modules=None,
            modules_to_save=list(saved) or None,
            init="gaussian",
            rank_pattern={re.escape(p): v["A"].shape[0] for p, v in lora.items()},
            alpha_pattern={re.escape(p): config.alpha_for(p) for p in lora},
        )
    )
    try:
        inject(model, shape_config, name)
    except LorakitError as exc:
        raise AdapterMismatchError(f"{path}: {exc}") from None
    adapter_configs(model)[name] = config
    _copy_in(model, name, parts_by_module, saved)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in _adapter_parameters(model):
        p.requires_grad_(grads.get(p, trainable))
    set_adapter(model, before or name)
    return name


def _adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for m in model.modules():
        if isinstance(m, LoraLayer):
            params += list(m.adapters.parameters())
        elif isinstance(m, ModulesToSave):
            params += list(m.copies.parameters())
    return params


@torch.no_grad()
def _copy_in(model: nn.Module, name: str, lora: dict, saved: dict) -> None:
    modules = dict(model.named_modules())
    for path, parts in lora.items():
        layer = modules[path]
        if isinstance(layer, LoraLayer) and name in layer.adapters:
            ad = layer.adapters[name]
            ad.A.copy_(parts["A"])
            ad.B.copy_(parts["B"])
            if "magnitude" in parts:
                ad.magnitude.copy_(parts["magnitude"])
        base = layer.base_layer if isinstance(layer, LoraLayer) else layer
        if "bias" in parts:
            base.bias.copy_(parts["bias"])
    for path, params in saved.items():
        copy = modules[path].copies[name]
        own = dict(copy.named_parameters())
        for param, tensor in params.items():
            own[param].copy_(tensor)
