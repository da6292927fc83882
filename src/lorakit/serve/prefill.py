"""A prefill batch: newly admitted prompts in one forward, their stored prefixes reused.

Each row reuses the longest run of its prompt's blocks in the prefix cache and computes
only the rest. The batch's inputs are then `[padding, reused prefix | padding, rest]` per
row: the reused keys and values go in as the past cache (right-aligned to the longest
reused prefix), the rest as input ids (right-aligned to the longest rest), and the mask and
positions skip both paddings, so every row computes exactly what it would alone. After
the forward each row's real columns are packed to the right (no padding inside a row)
before they join the running batch, and the prompt's full blocks are stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorakit.serve import kv
from lorakit.serve.prefix import BLOCK, Blocks, PrefixCache


@dataclass
class Batch:
    ids: torch.Tensor  # [rows, S] the tokens computed now
    mask: torch.Tensor  # [rows, P + S] reused prefix + computed tokens
    positions: torch.Tensor  # [rows, S]
    past: kv.BatchCache | None  # [rows, ..., P, ...] the reused prefixes, or None


def build(prompts: list[list[int]], hits: list[list[Blocks]], pad: int, device) -> Batch:
    reused = [len(h) * BLOCK for h in hits]
    P = max(reused)
    rest = [p[r:] for p, r in zip(prompts, reused, strict=True)]
    S = max(len(r) for r in rest)
    m = len(prompts)
    ids = torch.full((m, S), pad, dtype=torch.long)
    mask = torch.zeros((m, P + S), dtype=torch.long)
    for i, (r, tokens) in enumerate(zip(reused, rest, strict=True)):
        ids[i, S - len(tokens) :] = torch.tensor(tokens)
        mask[i, P - r : P] = 1
        mask[i, P + S - len(tokens) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, P:]
    past = _past(hits, P, device) if P else None
    return Batch(ids.to(device), mask.to(device), positions.to(device), past)


def _past(hits: list[list[Blocks]], P: int, device) -> kv.BatchCache:
    first = next(h for h in hits if h)[0]
    layers = []
    for layer, (k0, v0) in enumerate(first):
        ks = k0.new_zeros((len(hits), k0.shape[0], P, k0.shape[2]))
        vs = v0.new_zeros((len(hits), v0.shape[0], P, v0.shape[2]))
        for i, blocks in enumerate(hits):
            if blocks:
                n = len(blocks) * BLOCK
                ks[i, :, P - n :] = torch.cat([b[layer][0] for b in blocks], dim=1)
                vs[i, :, P - n :] = torch.cat([b[layer][1] for b in blocks], dim=1)
        layers.append((ks.to(device), vs.to(device)))
    mask = torch.zeros((len(hits), P), dtype=torch.long, device=device)
    return kv.BatchCache(layers, mask)


def pack(cache: kv.BatchCache) -> kv.BatchCache:
    """Each row's real columns moved to the right end (padding only on the left)."""
    mask = cache.mask
    counts = mask.sum(1)
    T = int(counts.max())
    # a row's real columns, in order, right-aligned in T slots (the slots left of them hold
    # padding columns: masked, and finite)
    order = torch.argsort(mask, dim=1, stable=True)[:, -T:]
    if mask.shape[1] == T and bool((order == torch.arange(T, device=mask.device)).all()):
        return cache  # already packed (no reused prefix)
    new_mask = (torch.arange(T, device=mask.device)[None, :] >= (T - counts)[:, None]).long()
    index = order[:, None, :, None]
    layers = []
    for k, v in cache.layers:
        gk = index.expand(k.shape[0], k.shape[1], T, k.shape[3])
        gv = index.expand(v.shape[0], v.shape[1], T, v.shape[3])
        layers.append((k.gather(2, gk), v.gather(2, gv)))
    return kv.BatchCache(layers, new_mask)


def store(prefix: PrefixCache, owners: list[str | None], prompts: list[list[int]],
          packed: kv.BatchCache) -> None:  # fmt: skip
    """Keep the full prompt blocks of each row (owner None: not cached)."""
    T = packed.mask.shape[1]
    for i, (owner, ids) in enumerate(zip(owners, prompts, strict=True)):
        if owner is None or len(ids) < BLOCK:
            continue
        n = len(ids)
        prefix.store(owner, ids, [(k[i, :, T - n :], v[i, :, T - n :]) for k, v in packed.layers])
