"""Reading an adapter directory (peft- or lorakit-written) and attaching it to a model.

`read_adapter` reads and validates everything that needs no model (config field types,
regexes, finite float tensors, key names, ranks) and touches no model, so a server runs it
off its engine thread. `attach_adapter` checks every key and shape against the model, then
injects and copies; a failure at any point leaves the model exactly as it was.
`load_adapter` is the two in turn.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters.files import read_config, read_weights
from lorakit.adapters.peft_format import CONFIG_NAME, WEIGHTS_NAME, from_peft_config, parse_key
from lorakit.adapters.validate import check_module_path, check_tensor, short
from lorakit.config import LoraConfig
from lorakit.errors import AdapterFormatError, AdapterMismatchError, ConfigError, LorakitError
from lorakit.lora.inject import adaptable_modules, inject
from lorakit.lora.layer import LoraLayer, is_quantized, linear_shape
from lorakit.lora.registry import (
    RegistryState,
    active_adapters,
    adapter_configs,
    lora_modules,
    named_lora_modules,
    set_adapter,
    set_module,
)
from lorakit.lora.saved_module import ModulesToSave

__all__ = [
    "ReadAdapter",
    "check_attachable",
    "attach_adapter",
    "load_adapter",
    "read_adapter",
    "read_config",
    "read_weights",
]


@dataclass(frozen=True)
class ReadAdapter:
    """An adapter directory read and validated without a model (what `read_adapter` returns)."""

    path: Path
    raw: dict = field(repr=False)  # adapter_config.json as read
    config: LoraConfig
    tensors: dict[str, torch.Tensor] = field(repr=False)  # file key -> tensor
    # module path -> {"A", "B", "magnitude", "bias", "base_weight": tensor}
    parts: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    saved: dict[str, dict[str, torch.Tensor]] = field(repr=False)  # modules_to_save params
    ranks: dict[str, int] = field(repr=False)  # adapted module path -> r
    alphas: dict[str, float] = field(repr=False)  # adapted module path -> alpha
    stem: str = "adapter"  # the adapter's name when "default" is taken

    @property
    def bias(self) -> str:
        """Which base biases the adapter carries: none, all or lora_only."""
        return self.config.bias

    @property
    def task_type(self) -> str | None:
        return self.config.task_type

    def scaling(self, module: str) -> float:
        """The factor on B A of an adapted module: alpha / r (alpha / sqrt(r) with rsLoRA)."""
        r = self.ranks[module]
        return self.alphas[module] / (math.sqrt(r) if self.config.use_rslora else r)


def read_adapter(
    path: str | Path, allow_pickle: bool = False, *, confine: bool = False
) -> ReadAdapter:
    """Read and validate an adapter directory without a model (thread-safe; no model access).

    Checks the config's field types and regexes, that every tensor is a finite float under a
    LoRA key, and that ranks agree between tensors and config. `confine`: every file read must
    be a regular file inside the directory (no symlinks out of it). Raises AdapterFormatError.
    """
    path = Path(path)
    raw = read_config(path, confine=confine)
    tensors = read_weights(path, allow_pickle, confine=confine)
    file = path / CONFIG_NAME
    try:
        config = LoraConfig(**from_peft_config(raw))
    except ConfigError as exc:
        raise AdapterFormatError(f"{file}: {exc}") from None
    parts, saved = _group(tensors, config, path / WEIGHTS_NAME)
    ranks, alphas = {}, {}
    for module, p in parts.items():
        if "A" not in p:
            continue
        r = p["A"].shape[0]
        if r != config.rank_for(module):
            raise AdapterFormatError(
                f"{path / WEIGHTS_NAME}: {module}: tensors have rank {r} but {CONFIG_NAME} gives r={config.rank_for(module)} — fix r / rank_pattern"
            )
        ranks[module], alphas[module] = r, config.alpha_for(module)
    if not ranks and not saved:
        raise AdapterFormatError(
            f"{path / WEIGHTS_NAME} holds no LoRA weights — re-save the adapter"
        )
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", os.path.basename(os.path.realpath(path))) or "adapter"
    return ReadAdapter(path, raw, config, tensors, parts, saved, ranks, alphas, stem)


def _group(tensors: dict, config: LoraConfig, file: Path):
    """Check every key and tensor; ({module: {part: tensor}}, {saved module: {param: tensor}})."""
    saved_names = list(config.modules_to_save or [])
    parts: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        parsed = parse_key(key, saved_names)
        if parsed is None:
            raise AdapterFormatError(
                f"{file}: unexpected tensor {short(key, 320)} — not a LoRA key peft or lorakit writes"
            )
        check_module_path(parsed.module, key, file)
        if parsed.part == "original":
            continue
        check_tensor(tensor, key, file)
        if parsed.part == "saved":
            saved.setdefault(parsed.module, {})[parsed.param] = tensor
            continue
        if parsed.part == "bias" and config.bias == "none":
            raise AdapterFormatError(
                f"{file}: tensor {short(key, 320)} is a bias but {CONFIG_NAME} has bias='none' — re-save the adapter"
            )
        parts.setdefault(parsed.module, {})[parsed.part] = tensor
    for module, p in parts.items():
        if {"A", "B"} <= p.keys():
            A, B = p["A"], p["B"]
            if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1] or A.shape[0] == 0:
                raise AdapterFormatError(
                    f"{file}: {module} has A {list(A.shape)} and B {list(B.shape)} — "
                    "LoRA needs A [r, in] and B [out, r] with r >= 1"
                )
            if config.use_dora != ("magnitude" in p):
                raise AdapterFormatError(
                    f"{file}: {module}: use_dora={config.use_dora} but DoRA magnitude is {'missing' if config.use_dora else 'present'}"
                )
            if "magnitude" in p and tuple(p["magnitude"].shape) != (B.shape[0],):
                raise AdapterFormatError(
                    f"{file}: {module} has DoRA magnitude {list(p['magnitude'].shape)} for B {list(B.shape)} — needs [{B.shape[0]}]"
                )
        elif {"A", "B", "magnitude"} & p.keys():
            raise AdapterFormatError(
                f"{file}: {module} has only one of lora_A / lora_B — the file is incomplete"
            )
        if "bias" in p and p["bias"].dim() != 1:
            raise AdapterFormatError(
                f"{file}: {module} has a bias of shape {list(p['bias'].shape)}"
            )
    return parts, saved


def _module_dims(module: nn.Module, kind: str) -> tuple[int, int]:
    base = module.base_layer if isinstance(module, LoraLayer) else module
    out, n_in = linear_shape(base, kind)
    return n_in, out


def _plan(model: nn.Module, read: ReadAdapter):
    """Check every module and shape against the model. Returns three dicts:
    ({adapted module: {part: tensor}}, {module: {part: tensor}} including bias-only modules,
    {saved module: {param: tensor}})."""
    base_name = read.config.base_model_name_or_path or "unknown"
    hint = f"was the adapter trained on another base model (its base: {base_name})?"
    candidates = adaptable_modules(model)
    modules = _Modules(model)
    for path, parts in read.parts.items():
        if "A" in parts:
            if path not in candidates:
                raise AdapterMismatchError(
                    f"adapter has weights for {path!r}, which this model lacks — {hint}"
                )
            module, kind = candidates[path]
            n_in, out = _module_dims(module, kind)
            A, B = parts["A"], parts["B"]
            if A.shape[1] != n_in or B.shape[0] != out:
                raise AdapterMismatchError(
                    f"{path}: adapter has A {list(A.shape)} and B {list(B.shape)}, but the layer needs "
                    f"A [r, {n_in}] and B [{out}, r] — {hint}"
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
    for path, params in read.saved.items():
        module = modules.get(path)
        if isinstance(module, ModulesToSave):
            module = module.original_module
        if module is None:
            raise AdapterMismatchError(
                f"adapter saves module {path!r}, which this model lacks — {hint}"
            )
        if is_quantized(module):  # its codes cannot take the saved weights
            raise AdapterMismatchError(
                f"adapter saves its own copy of {path!r}, which is {module.quant_type}-quantized "
                "here — load it on a base that is not quantized (drop --quantize)"
            )
        own = dict(module.named_parameters())
        for name, tensor in params.items():
            if name not in own or own[name].shape != tensor.shape:
                have = list(own[name].shape) if name in own else "nothing"
                raise AdapterMismatchError(
                    f"{path}.{name}: adapter has {list(tensor.shape)}, the model has {have} — {hint}"
                )
    lora = {p: v for p, v in read.parts.items() if "A" in v}
    return lora, read.parts, read.saved


class _Modules:
    """`dict(model.named_modules())` for the lookups attaching needs (`get`, `[path]`),
    without walking the model: one holding many adapters has thousands of modules."""

    def __init__(self, model: nn.Module):
        self.model = model

    def get(self, path: str, default=None):
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            return default

    def __getitem__(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)


def check_attachable(model: nn.Module, read: ReadAdapter) -> None:
    """Raise AdapterMismatchError if `read` does not fit `model` (what attach_adapter checks
    first), without changing the model."""
    _plan(model, read)


def _free_name(model: nn.Module, stem: str) -> str:
    taken = adapter_configs(model)
    if "default" not in taken:
        return "default"
    name, i = stem, 1
    while name in taken:
        i += 1
        name = f"{stem}_{i}"
    return name


def attach_adapter(
    model: nn.Module, read: ReadAdapter, adapter: str | None = None, *, trainable: bool = False
) -> str:
    """Attach a read adapter to `model` as `adapter` (default: "default", or the directory's
    name if taken) and return the name. No file I/O.

    Every module and shape is checked against the model first; then the adapter is injected
    and its tensors copied. All-or-nothing: on any failure the adapter is taken out again
    and the model's modules, values, active adapters and requires_grad are as before.
    The new adapter becomes active only if no adapter was active; it is frozen unless
    `trainable`.
    """
    config = read.config
    lora, parts_by_module, saved = _plan(model, read)
    name = adapter if adapter is not None else _free_name(model, read.stem)
    if name in adapter_configs(model):
        raise ConfigError(
            f"adapter {name!r} already exists — delete_adapter() it or pass another name"
        )
    # Patterns only for what differs from r / alpha: no regex of the adapter's is run here.
    shape_config = config.model_copy(
        update=dict(
            target_modules=list(lora),
            exclude_modules=None,
            modules_to_save=list(saved) or None,
            init="gaussian",
            rank_pattern={re.escape(p): r for p, r in read.ranks.items() if r != config.r} or None,
            alpha_pattern={re.escape(p): a for p, a in read.alphas.items() if a != config.alpha}
            or None,
        )
    )
    before = active_adapters(model)
    snapshot = _Snapshot(model, parts_by_module)  # every parameter's requires_grad too
    try:
        try:
            inject(model, shape_config, name)
        except LorakitError as exc:
            raise AdapterMismatchError(f"{read.path}: {exc}") from None
        adapter_configs(model)[name] = config
        _copy_in(model, name, parts_by_module, saved)
        # inject froze everything but the new adapter (and the biases its config names,
        # which attaching never trains); the adapters keep what they had, the new one is
        # trainable only if asked
        if config.bias != "none":
            for p in model.parameters():
                p.requires_grad_(False)
        for p in _adapter_parameters(model):
            p.requires_grad_(snapshot.grads.get(p, trainable))
        set_adapter(model, before or name)
    except BaseException:
        snapshot.restore(model, name)
        raise
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
    return attach_adapter(model, read_adapter(path, allow_pickle), adapter, trainable=trainable)


class _Snapshot:
    """What attaching an adapter can change, kept to undo a failed attach."""

    def __init__(self, model: nn.Module, parts: dict):
        self.modules = set(lora_modules(model))  # the LoRA wrappers that existed before
        self.active = {m: list(m.active) for m in self.modules}
        self.registry = RegistryState(model)
        self.grads = {p: p.requires_grad for p in model.parameters()}
        modules = _Modules(model)
        self.biases = []
        for path, p in parts.items():
            target = modules.get(path)
            base = target.base_layer if isinstance(target, LoraLayer) else target
            if "bias" in p and getattr(base, "bias", None) is not None:
                self.biases.append((base.bias, base.bias.detach().clone()))

    @torch.no_grad()
    def restore(self, model: nn.Module, name: str) -> None:
        for path, m in list(named_lora_modules(model)):
            held = m.adapters if isinstance(m, LoraLayer) else m.copies
            if name in held:
                del held[name]
            if m in self.modules:
                m.active = self.active[m]
            else:  # a wrapper this attach created: put the original module back
                original = m.base_layer if isinstance(m, LoraLayer) else m.original_module
                set_module(model, path, original)
        self.registry.restore(model)
        for p, grad in self.grads.items():
            p.requires_grad_(grad)
        for p, value in self.biases:
            p.copy_(value)


def _adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for m in lora_modules(model):
        if isinstance(m, LoraLayer):
            params += list(m.adapters.parameters())
        elif isinstance(m, ModulesToSave):
            params += list(m.copies.parameters())
    return params


@torch.no_grad()
def _copy_in(model: nn.Module, name: str, lora: dict, saved: dict) -> None:
    modules = _Modules(model)
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
