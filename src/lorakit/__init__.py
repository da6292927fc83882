"""lorakit: LoRA for any PyTorch model — train, measure, merge, swap and serve adapters.

import lorakit
model = lorakit.inject(model, lorakit.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
lorakit.print_trainable_parameters(model)
...train...
lorakit.save_adapter(model, "my-adapter")          # a peft-format directory
"""

from lorakit.adapters import load_adapter, save_adapter
from lorakit.config import LoraConfig
from lorakit.errors import (
    AdapterFormatError,
    AdapterMismatchError,
    AdapterNotFoundError,
    ConfigError,
    DataError,
    LorakitError,
    ModelNotFoundError,
    OutputExistsError,
    TargetNotFoundError,
    UnsupportedAdapterError,
)
from lorakit.lora import (
    adapter_per_row,
    add_weighted_adapter,
    delete_adapter,
    disable_adapters,
    inject,
    list_adapters,
    merge,
    merge_and_unload,
    print_trainable_parameters,
    set_adapter,
    trainable_parameters,
    unmerge,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterFormatError",
    "AdapterMismatchError",
    "AdapterNotFoundError",
    "ConfigError",
    "DataError",
    "LoraConfig",
    "LorakitError",
    "ModelNotFoundError",
    "OutputExistsError",
    "TargetNotFoundError",
    "UnsupportedAdapterError",
    "adapter_per_row",
    "add_weighted_adapter",
    "delete_adapter",
    "disable_adapters",
    "inject",
    "list_adapters",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "print_trainable_parameters",
    "save_adapter",
    "set_adapter",
    "trainable_parameters",
    "unmerge",
]
