"""Where a model's tensors live: the device a `--device` name picks, and whether the model
is sharded over processes (FSDP). Torch only, so every layer may ask."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lorakit.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when one is visible, else cpu; `cuda` without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible — use --device cpu or auto")
    return torch.device(name)


def in_process_group() -> bool:
    # Without a process group nothing can be sharded: single-process runs skip importing
    # torch.distributed.tensor / fsdp (most of a second) and every check that needs them.
    return dist.is_available() and dist.is_initialized()


def is_sharded(model: nn.Module) -> bool:
    """True for a model that FSDP2's fully_shard wrapped (its forward is then a collective)."""
    if not in_process_group():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
