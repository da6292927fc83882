"""The running batch's KV cache: one left-padded tensor pair per layer plus a padding mask.

Rows have different lengths, so each row's tokens sit at the right end of the cache and
the mask marks the padding on the left (the layout batched `generate` uses). Rows join by
padding both sides to a common length and concatenating; rows leave by index; columns
that are padding in every remaining row are trimmed so the cache never grows from rows
that left. Each row's positions (for RoPE / learned positions) are its own token count,
so padding never shifts a row's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [n, 0]
    return F.pad(t, pad)


def merge(old: BatchCache | None, new: BatchCache) -> BatchCache:
    """Rows of `old` then rows of `new`, left-padded to one length."""
    if old is None or old.rows == 0:
        return new
    length = max(old.mask.shape[1], new.mask.shape[1])
    a, b = length - old.mask.shape[1], length - new.mask.shape[1]
    layers = [
        (
            torch.cat([_pad_left(ko, a, 2), _pad_left(kn, b, 2)]),
            torch.cat([_pad_left(vo, a, 2), _pad_left(vn, b, 2)]),
        )
        for (ko, vo), (kn, vn) in zip(old.layers, new.layers, strict=True)
    ]
    mask = torch.cat([_pad_left(old.mask, a, 1), _pad_left(new.mask, b, 1)])
    return BatchCache(layers, mask)


def select(batch: BatchCache, keep: list[int]) -> BatchCache | None:
    """Only the rows `keep`, with columns that are padding for all of them dropped."""
    if not keep:
        return None
    index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    used = mask.any(0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
        for k, v in batch.layers
    ]
    return BatchCache(layers, mask[:, start:])
