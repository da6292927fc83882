"""PEFT-format adapter files: read, validate, write."""

from lorakit.adapters.files import confined_file, read_config, read_labels, read_weights
from lorakit.adapters.load import (
    ReadAdapter,
    attach_adapter,
    check_attachable,
    load_adapter,
    read_adapter,
)
from lorakit.adapters.save import adapter_state, save_adapter

__all__ = [
    "ReadAdapter",
    "adapter_state",
    "attach_adapter",
    "check_attachable",
    "confined_file",
    "load_adapter",
    "read_adapter",
    "read_config",
    "read_labels",
    "read_weights",
    "save_adapter",
]
