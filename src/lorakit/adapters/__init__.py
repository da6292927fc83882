"""PEFT-format adapter files: read, validate, write."""

from lorakit.adapters.load import load_adapter, read_config, read_weights
from lorakit.adapters.save import adapter_state, save_adapter

__all__ = ["adapter_state", "load_adapter", "read_config", "read_weights", "save_adapter"]
