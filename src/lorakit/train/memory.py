"""A run's memory policy: whether freed CPU memory goes back to the system while it trains
(`release_memory`; the allocator's side is lorakit/allocator.py)."""

from __future__ import annotations

import torch

from lorakit.allocator import large_blocks_returned
from lorakit.config import TrainConfig
from lorakit.device import resolve_device


def wants_release_memory(config: TrainConfig, device: torch.device) -> bool:
    """`release_memory` resolved: None means on for a CPU run that asked for low memory in
    another way (quantize, activation_checkpointing)."""
    if config.release_memory is not None:
        return config.release_memory
    low = config.quantize != "none" or config.activation_checkpointing
    return device.type == "cpu" and low


def memory_policy(config: TrainConfig):
    """Context for a whole run: freed CPU memory goes back to the system while it lasts when
    `wants_release_memory` (see lorakit/allocator.py). Yields whether the policy is on."""
    return large_blocks_returned(wants_release_memory(config, resolve_device(config.device)))
