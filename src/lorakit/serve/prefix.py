"""Shared prompt prefixes: the keys and values of prompt blocks already computed, reused.

Prompts are cut into blocks of BLOCK tokens. Block j of a prompt is stored under a digest
of (what computed it, every token up to the end of block j) — chained BLAKE2b, so equal
keys mean equal token prefixes in practice (not Python's `hash`, which a client could make
collide to read another prompt's keys and values). "What computed it" is the base model or
one attachment of one adapter: an adapter changes K and V on its own rows, so its blocks are
its own, and blocks of an adapter are dropped when it leaves the bank (the same name loaded
again may hold other weights).

A prompt reuses its longest run of stored blocks, but always computes its last token (the
logits of the next token come from it). Blocks are kept least recently used first out,
within a byte budget (--prefix-cache-mb).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

BLOCK = 16

Blocks = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V): [heads, BLOCK, dim]


def _digests(owner: str, ids: list[int], blocks: int) -> list[bytes]:
    out, prev = [], hashlib.blake2b(owner.encode(), digest_size=16).digest()
    for j in range(blocks):
        chunk = ids[j * BLOCK : (j + 1) * BLOCK]
        prev = hashlib.blake2b(
            prev + b"".join(t.to_bytes(4, "little", signed=True) for t in chunk), digest_size=16
        ).digest()
        out.append(prev)
    return out


class PrefixCache:
    def __init__(self, budget_bytes: int, metrics=None):
        self.budget, self.metrics = budget_bytes, metrics
        self.blocks: OrderedDict[bytes, Blocks] = OrderedDict()
        self.owners: dict[bytes, str] = {}
        self.bytes = 0
        self.hit_tokens = 0
        self.lookup_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def lookup(self, owner: str, ids: list[int]) -> list[Blocks]:
        """The stored blocks that start `ids`, longest run first-to-last (at most len-1
        tokens: the last token is always computed)."""
        self.lookup_tokens += len(ids)
        if not self.enabled:
            return []
        found, keys = [], []
        for key in _digests(owner, ids, (len(ids) - 1) // BLOCK):
            block = self.blocks.get(key)
            if block is None:
                break
            found.append(block)
            keys.append(key)
        self._touch(keys)
        self.hit_tokens += len(found) * BLOCK
        if self.metrics is not None:
            self.metrics.prefix_lookup_tokens.inc(len(ids))
            self.metrics.prefix_hit_tokens.inc(len(found) * BLOCK)
        return found

    def store(self, owner: str, ids: list[int], layers: Blocks) -> None:
        """Keep the full blocks of a prompt. `layers`: per layer (K, V) of the prompt's real
        tokens, [heads, len(ids), dim]."""
        if not self.enabled:
            return
        keys = _digests(owner, ids, len(ids) // BLOCK)
        for j, key in enumerate(keys):
            if key in self.blocks:
                continue
            cols = slice(j * BLOCK, (j + 1) * BLOCK)
            block = [(k[:, cols].clone(), v[:, cols].clone()) for k, v in layers]
            size = sum(k.nbytes + v.nbytes for k, v in block)
            if size > self.budget:
                return
            while self.bytes + size > self.budget:
                self._pop(next(iter(self.blocks)))
            self.blocks[key], self.owners[key] = block, owner
            self.bytes += size
        self._touch([k for k in keys if k in self.blocks])

    def _touch(self, keys: list[bytes]) -> None:
        """Most recent last, a prompt's first block last of all: the deepest blocks of a run
        go first, so eviction never leaves a run with a hole that hides the blocks after it."""
        for key in reversed(keys):
            self.blocks.move_to_end(key)

    def drop(self, owner: str) -> None:
        """Forget every block computed by `owner` (an adapter leaving the bank)."""
        for key in [k for k, o in self.owners.items() if o == owner]:
            self._pop(key)

    def _pop(self, key: bytes) -> None:
        block = self.blocks.pop(key)
        self.owners.pop(key)
        self.bytes -= sum(k.nbytes + v.nbytes for k, v in block)
