"""How many rows each data source gives a split, and which ones: deterministic mixing.

Without weights the sources are concatenated (every row once, as one file holding them all
would be). With weights, source i gets the share w_i / sum(w) of the training rows (as many
as all the sources have together, or max_train_samples), drawn from a seeded shuffle of its
rows and repeated whole when the share is larger than the source.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainder: the counts sum to total)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def counts(sizes: Sequence[int], weights: Sequence[float] | None, limit: int | None) -> list[int]:
    """Rows taken from each source: `sizes` (capped in proportion to fit `limit`), or the
    shares of `weights`."""
    total = sum(sizes) if limit is None else min(limit, sum(sizes))
    if weights is None:
        return list(sizes) if total == sum(sizes) else shares(total, sizes)
    return shares(total, weights)


def pick(size: int, n: int, seed: int | str | None = None) -> list[int]:
    """`n` row indices of a source of `size` rows: the first n (seed None: the splits are
    already in a hashed, random-like order), or a shuffle by `seed`, repeated whole as needed."""
    if n == 0 or size == 0:
        return []
    order = list(range(size))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return (order * math.ceil(n / size))[:n]
