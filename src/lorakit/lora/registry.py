"""A model's adapter registry: configs and active names (kept on the root module), the
walk over its LoRA modules, and module replacement. Every other lora/ file builds on this one."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import AdapterNotFoundError
from lorakit.lora.layer import LoraLayer
from lorakit.lora.saved_module import ModulesToSave

# Plain attributes of the root module (its __dict__): not state_dict entries, not submodules.
_CONFIGS = "_lorakit_configs"  # {adapter name: LoraConfig}, in the order they were added
_ACTIVE = "_lorakit_active"  # [adapter name], what set_adapter last chose


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """The LoraConfig of every adapter on the model, by name (kept on the root module)."""
    return model.__dict__.setdefault(_CONFIGS, {})


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters on the model, in the order they were added."""
    return list(adapter_configs(model))


def check_known(model: nn.Module, names: list[str]) -> None:
    known = list_adapters(model)
    for name in names:
        if name not in known:
            raise AdapterNotFoundError(
                f"no adapter named {name!r} — loaded adapters: {known or 'none'}"
            )


def active_adapters(model: nn.Module) -> list[str]:
    return list(model.__dict__.get(_ACTIVE, []))


def set_adapter(model: nn.Module, name: str | list[str] | None) -> None:
    """Make `name` the active adapter; a list sums several; None runs the base alone.

    Only changes which adapters forward uses; trainability is set by inject / load_adapter.
    """
    names = [] if name is None else [name] if isinstance(name, str) else list(name)
    check_known(model, names)
    for m in lora_modules(model):
        m.active = list(names)
    model.__dict__[_ACTIVE] = list(names)


class RegistryState:
    """The registry as it is now, to put back after a failed change (attach_adapter)."""

    def __init__(self, model: nn.Module):
        self.configs = model.__dict__.get(_CONFIGS)  # the dict object itself: inject adds to it
        self.config_items = dict(self.configs or {})
        self.active = model.__dict__.get(_ACTIVE)
        self.active_names = list(self.active or [])

    def restore(self, model: nn.Module) -> None:
        for key, value in ((_CONFIGS, self.configs), (_ACTIVE, self.active)):
            if value is None:
                model.__dict__.pop(key, None)
            else:
                model.__dict__[key] = value
        if self.configs is not None:
            self.configs.clear()
            self.configs.update(self.config_items)
        if self.active is not None:
            model.__dict__[_ACTIVE] = self.active_names


def named_lora_modules(
    model: nn.Module, *, inside_saved: bool = True
) -> Iterator[tuple[str, LoraLayer | ModulesToSave]]:
    """(path, module) of every LoraLayer and ModulesToSave, in `named_modules()` order.

    A LoraLayer is not walked into: its adapters can be thousands of modules, and nothing
    in it is a LoRA module. `inside_saved=False` also stops at a ModulesToSave (a LoRA
    layer can sit inside one whose module held it before it was saved)."""
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        path, module = stack.pop()
        if id(module) in seen:  # a module registered twice is visited once, as named_modules
            continue
        seen.add(id(module))
        if isinstance(module, LoraLayer):
            yield path, module
            continue
        if isinstance(module, ModulesToSave):
            yield path, module
            if not inside_saved:
                continue
        prefix = path + "." if path else ""
        # reversed onto the stack: children come off it in registration order (pre-order)
        stack.extend(
            (prefix + name, child)
            for name, child in reversed(module._modules.items())
            if child is not None  # a child slot may hold None (a module registered as absent)
        )


def lora_modules(model: nn.Module, *, inside_saved: bool = True) -> list[LoraLayer | ModulesToSave]:
    """Every LoraLayer and ModulesToSave of the model (see named_lora_modules)."""
    return [m for _, m in named_lora_modules(model, inside_saved=inside_saved)]


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """path -> LoraLayer, for every one in the model."""
    return {n: m for n, m in named_lora_modules(model) if isinstance(m, LoraLayer)}


def saved_modules(model: nn.Module) -> dict[str, ModulesToSave]:
    """path -> ModulesToSave, for every one in the model."""
    return {n: m for n, m in named_lora_modules(model) if isinstance(m, ModulesToSave)}


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at `path` ("a.b.c") of `model`, in place of what is there."""
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
