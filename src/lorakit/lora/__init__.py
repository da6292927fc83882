"""Pure torch LoRA: layers, injection, merging, multi-adapter batching. Imports torch only."""

from lorakit.lora.combine import add_weighted_adapter
from lorakit.lora.inject import find_targets, inject
from lorakit.lora.layer import Adapter, LoraLayer, layer_kind
from lorakit.lora.manage import (
    delete_adapter,
    disable_adapters,
    print_trainable_parameters,
    trainable_line,
    trainable_parameters,
)
from lorakit.lora.merge import merge, merge_and_unload, unmerge
from lorakit.lora.per_row import adapter_per_row
from lorakit.lora.registry import (
    active_adapters,
    adapter_configs,
    list_adapters,
    lora_layers,
    lora_modules,
    set_adapter,
)
from lorakit.lora.saved_module import ModulesToSave

__all__ = [
    "Adapter",
    "LoraLayer",
    "ModulesToSave",
    "active_adapters",
    "adapter_configs",
    "adapter_per_row",
    "add_weighted_adapter",
    "delete_adapter",
    "disable_adapters",
    "find_targets",
    "inject",
    "layer_kind",
    "list_adapters",
    "lora_layers",
    "lora_modules",
    "merge",
    "merge_and_unload",
    "print_trainable_parameters",
    "set_adapter",
    "trainable_line",
    "trainable_parameters",
    "unmerge",
]
