"""The running batch's KV cache, preallocated: one buffer pair per layer, written in place.

Each layer holds `K, V: [row capacity, heads, column capacity, dim]`. Rows sit at the right
end of the first `length` columns (left-padded, the layout batched `generate` uses) and a
`[rows, columns]` mask marks the padding. A decode step writes one column for every row
at `length` — no concatenation, so a step copies only its new keys and values. Capacity
grows in blocks (rows by 8 up to --max-batch-size, columns by 64 up to the model's context),
so memory is bounded by those two.

Rows join right-aligned to `length` (every column is shifted right first when a joining
row is longer than the batch); a row that leaves is filled by the last row (one row copied,
not the batch); columns that have become padding in every row are dropped only once they
are a whole block, so a trim is rare.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from lorakit.serve.kv import BatchCache

ROW_BLOCK = 8
COLUMN_BLOCK = 64


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


class SlotLayer(DynamicLayer):
    """One layer of a transformers cache whose `update` writes into the slot buffers."""

    def __init__(self, slots: SlotCache, index: int):
        super().__init__()
        self.slots, self.index = slots, index
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return self.slots.write(self.index, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.slots.length


class SlotCache:
    def __init__(self, max_rows: int, max_columns: int):
        self.max_rows, self.max_columns = max_rows, max_columns
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None  # [row capacity, column capacity] long
        self.rows = 0
        self.length = 0  # columns in use: every row ends at column `length`

    # -- capacity -------------------------------------------------------------------------------
    def _allocate(self, like: tuple[torch.Tensor, torch.Tensor], layers: int, rows: int, cols: int):
        k, v = like
        shape = lambda t: (rows, t.shape[1], cols, t.shape[3])  # noqa: E731
        # zeros, not empty: padding columns are masked, but a masked NaN still poisons the
        # weighted sum of V, so no slot may ever hold uninitialised memory
        keys = [torch.zeros(shape(k), dtype=k.dtype, device=k.device) for _ in range(layers)]
        values = [torch.zeros(shape(v), dtype=v.dtype, device=v.device) for _ in range(layers)]
        mask = torch.zeros((rows, cols), dtype=torch.long, device=k.device)
        if self.keys:  # keep what is there
            n, L = self.rows, self.length
            for new, old in zip(keys + values, self.keys + self.values, strict=True):
                new[:n, :, :L] = old[:n, :, :L]
            mask[:n, :L] = self.mask[:n, :L]
        self.keys, self.values, self.mask = keys, values, mask

    def _reserve(self, like, layers: int, rows: int, cols: int) -> None:
        have_rows = self.mask.shape[0] if self.mask is not None else 0
        have_cols = self.mask.shape[1] if self.mask is not None else 0
        if rows <= have_rows and cols <= have_cols:
            return
        rows = min(max(_round_up(rows, ROW_BLOCK), have_rows), max(self.max_rows, rows))
        cols = min(max(_round_up(cols, COLUMN_BLOCK), have_cols), max(self.max_columns, cols))
        self._allocate(like, layers, rows, cols)

    # -- what a forward sees ------------------------------------------------------------------------
    def reserve_step(self, new_columns: int) -> None:
        """Room for `new_columns` more columns for every row (before a forward)."""
        self._reserve((self.keys[0], self.values[0]), len(self.keys), self.rows,
                      self.length + new_columns)  # fmt: skip

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """A forward's new keys/values for all rows, at the columns after `length`."""
        q = k.shape[2]
        n, L = self.rows, self.length
        self.keys[layer][:n, :, L : L + q] = k
        self.values[layer][:n, :, L : L + q] = v
        return self.keys[layer][:n, :, : L + q], self.values[layer][:n, :, : L + q]

    def hf_cache(self) -> DynamicCache:
        cache = DynamicCache()
        cache.layers = [SlotLayer(self, i) for i in range(len(self.keys))]
        return cache

    def step_mask(self, new_columns: int) -> torch.Tensor:
        """The attention mask of the next forward: the rows' mask plus `new_columns` ones."""
        n, L = self.rows, self.length
        self.mask[:n, L : L + new_columns] = 1
        return self.mask[:n, : L + new_columns]

    def commit(self, new_columns: int) -> None:
        """The forward succeeded: its columns are part of every row now."""
        self.length += new_columns

    # -- rows joining and leaving -----------------------------------------------------------------
    def add(self, new: BatchCache) -> None:
        """Append the rows of `new` (left-padded, no padding inside a row)."""
        m, T = new.mask.shape
        if not self.keys:
            self.rows = self.length = 0
        self._reserve(new.layers[0], len(new.layers), self.rows + m, max(self.length, T))
        if self.length < T:  # the joining rows are longer: shift everyone right
            self._shift(T - self.length)
        n, L = self.rows, self.length
        for layer, (k, v) in enumerate(new.layers):
            for buf, t in ((self.keys[layer], k), (self.values[layer], v)):
                buf[n : n + m, :, : L - T] = 0
                buf[n : n + m, :, L - T : L] = t
        self.mask[n : n + m, : L - T] = 0
        self.mask[n : n + m, L - T : L] = new.mask
        self.rows += m

    def _shift(self, by: int) -> None:
        n, L = self.rows, self.length
        for buf in self.keys + self.values:
            buf[:n, :, by : by + L] = buf[:n, :, :L].clone()
            buf[:n, :, :by] = 0
        self.mask[:n, by : by + L] = self.mask[:n, :L].clone()
        self.mask[:n, :by] = 0
        self.length = L + by

    def remove(self, done: set[int]) -> list[int]:
        """Drop the rows `done`; returns the old index of each remaining row, in order.
        Holes are filled by moving rows from the end (one copy per hole)."""
        n = self.rows
        left = n - len(done)
        holes = [i for i in sorted(done) if i < left]
        movers = [i for i in range(left, n) if i not in done]
        order = list(range(left))
        if holes:
            to = torch.tensor(holes, device=self.mask.device)
            frm = torch.tensor(movers, device=self.mask.device)
            L = self.length
            for buf in self.keys + self.values:
                buf[to, :, :L] = buf[frm, :, :L]
            self.mask[to, :L] = self.mask[frm, :L]
            for h, m in zip(holes, movers, strict=True):
                order[h] = m
        self.rows = left
        if left == 0:  # idle: give the memory back
            self.keys, self.values, self.mask = [], [], None
            self.length = 0
        else:
            self._trim()
        return order

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row, a whole block at a time."""
        n, L = self.rows, self.length
        used = self.mask[:n, :L].any(0).nonzero()
        start = int(used[0]) if used.numel() else L
        start = (start // COLUMN_BLOCK) * COLUMN_BLOCK
        if start == 0:
            return
        for buf in self.keys + self.values:
            buf[:n, :, : L - start] = buf[:n, :, start:L].clone()
        self.mask[:n, : L - start] = self.mask[:n, start:L].clone()
        self.length = L - start

    def row(self, i: int) -> BatchCache:
        """A copy of row i alone (for retrying it by itself)."""
        L = self.length
        layers = [
            (k[i : i + 1, :, :L].clone(), v[i : i + 1, :, :L].clone())
            for k, v in zip(self.keys, self.values, strict=True)
        ]
        return BatchCache(layers, self.mask[i : i + 1, :L].clone())
