"""A batch's KV tensors: one left-padded tensor pair per layer plus a padding mask, and
transformers' cache objects over them (a prefill's output, a row retried alone; the running
batch lives in `slots.SlotCache`).

Rows have different lengths, so each row's tokens sit at the right end and the mask marks
the padding on the left (the layout batched `generate` uses). Each row's positions (for
RoPE / learned positions) are its own token count, so padding never shifts a row's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.errors import ConfigError


@dataclass
class BatchCache:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V): [rows, heads, len, dim]
    mask: torch.Tensor  # [rows, len] long, 1 = real token

    @property
    def rows(self) -> int:
        return self.mask.shape[0]


def new_hf_cache():
    """An empty transformers DynamicCache of plain full-attention layers (no sliding window:
    the padding layout above needs every layer to keep all columns)."""
    from transformers import DynamicCache

    return DynamicCache()


def from_hf(cache, mask: torch.Tensor) -> BatchCache:
    layers = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or keys.dim() != 4:
            raise ConfigError(
                f"lorakit serve needs a key/value attention cache, but this model's cache "
                f"has a {type(layer).__name__} layer"
            )
        layers.append((keys, values))
    return BatchCache(layers, mask)


def to_hf(batch: BatchCache):
    """A DynamicCache holding the batch's tensors as they are (no copy)."""
    from transformers.cache_utils import DynamicLayer

    cache = new_hf_cache()
    layers = []
    for k, v in batch.layers:
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        layers.append(layer)
    cache.layers = layers
    return cache
