"""Pure torch LoRA: layers, injection, merging, multi-adapter batching. Imports torch only."""

from lorakit.lora.batching import adapter_per_row
from lorakit.lora.combine import add_weighted_adapter
from lorakit.lora.inject import adapter_configs, find_targets, inject
from lorakit.lora.layer import Adapter, LoraLayer, layer_kind
from lorakit.lora.manage import (
    active_adapters,
    delete_adapter,
    disable_adapters,
    list_adapters,
    lora_layers,
    print_trainable_parameters,
    set_adapter,
    trainable_line,
    trainable_parameters,
)
from lorakit.lora.merge import merge, merge_and_unload, unmerge
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
    "merge",
    "merge_and_unload",
    "print_trainable_parameters",
    "set_adapter",
    "trainable_line",
    "trainable_parameters",
    "unmerge",
]
