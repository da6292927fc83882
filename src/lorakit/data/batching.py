"""Batches without wasted compute: length-grouped dynamic padding, and packing for causal LM.

Padding tokens cost a full forward and backward each, so batches hold examples of similar
length (sorted within shuffled mega-batches: random enough for SGD, little padding), and are
padded only to their own longest example. Packing goes further for causal LM: documents
share fixed-length rows, with a block-diagonal causal mask so no token attends across a
document boundary, and position ids that restart at 0 per document. A packed batch gives the
same per-token loss as running each document alone.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence

import torch

IGNORE = -100


def lengths_of(ds, column: str = "input_ids") -> list[int]:
    """Token counts of a datasets.Dataset column (or of a list of dicts) without decoding rows."""
    if len(ds) == 0:  # an empty split's columns have no list type (arrow: null) to measure
        return []
    if hasattr(ds, "with_format"):
        import pyarrow.compute as pc

        return pc.list_value_length(ds.with_format("arrow")[column]).to_pylist()
    return [len(row[column]) for row in ds]


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    mega_batch_mult: int = 50,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[list[int]]:
    """Lists of example indices: shuffled, then sorted by length within mega-batches.

    shuffle=True: indices are permuted by `seed`, cut into mega-batches of
    `batch_size * mega_batch_mult`, sorted longest-first inside each, cut into batches, and
    the batches shuffled again; the batch holding the longest example goes first so an
    out-of-memory error shows at step 1, not hours in. shuffle=False (evaluation): the same
    without any permutation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    mega = max(batch_size * mega_batch_mult, batch_size)
    batches = []
    for start in range(0, len(order), mega):
        # sorted() is stable, so equal lengths keep their (seeded) order
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches = [b for b in batches if len(b) == batch_size]
    if shuffle and batches:
        rng.shuffle(batches)
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches


def collate(
    examples: Sequence[dict],
    pad_id: int,
    *,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad `input_ids` (and per-token `labels`) to the longest example of the batch.

    Returns input_ids and attention_mask [B, T] and labels: [B, T] with IGNORE at padding,
    or [B] when each example has one label (classification). Pad on the right for training:
    causal models then see positions 0.. for every row without needing position ids.
    """
    width = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    # per-token labels (causal LM) are sequences; one label per row (classification) is a scalar
    first = examples[0].get("labels")
    per_token = isinstance(first, (list, tuple)) or getattr(first, "ndim", 0) > 0
    labels = torch.full((batch, width), IGNORE, dtype=torch.long) if per_token else None
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.as_tensor(example["input_ids"], dtype=torch.long)
        attention_mask[row, cols] = 1
        if labels is not None:
            labels[row, cols] = torch.as_tensor(example["labels"], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        out["labels"] = labels
    elif "labels" in examples[0]:
        out["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    return out


def make_collate(tokenizer, **kwargs) -> Callable[[Sequence[dict]], dict[str, torch.Tensor]]:
    """`collate` with the tokenizer's pad id, for a DataLoader's collate_fn."""
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return lambda examples: collate(examples, pad_id, **kwargs)


def pack(examples: Sequence[dict], seq_len: int, pad_id: int) -> list[dict]:
    """Documents -> rows of exactly `seq_len` tokens, best-fit decreasing, never split.

    Each row: input_ids, labels, position_ids (restarting at 0 per document) and seq_lens
    (the documents' lengths; the rest of the row is padding, labels IGNORE). The first
    label of every document is IGNORE: in a packed row the token before it is the previous
    document's last token, which must not be trained to predict it; alone, that label is
    never used (nothing precedes it), so the per-token losses are the same. Documents
    longer than `seq_len` are truncated, empty ones skipped. Deterministic for a given input
    order.
    """
    if hasattr(examples, "to_list"):  # a datasets.Dataset: decode once, not per access
        examples = examples.to_list()
    sizes = [min(len(e["input_ids"]), seq_len) for e in examples]
    docs = sorted((i for i in range(len(examples)) if sizes[i] > 0), key=lambda i: -sizes[i])
    rows: list[list[int]] = []  # document indices per row
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted: best fit = first that fits
    for i in docs:
        n = sizes[i]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (seq_len - n, len(rows) - 1))
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            bisect.insort(free, (space - n, row))
    return [_pack_row([examples[i] for i in row], seq_len, pad_id) for row in rows]


def _pack_row(docs: Sequence[dict], seq_len: int, pad_id: int) -> dict:
    ids, labels, positions, seq_lens = [], [], [], []
    for doc in docs:
        x = list(doc["input_ids"][:seq_len])
        y = list(doc.get("labels", x)[: len(x)])
        y[0] = IGNORE
        ids += x
        labels += y
        positions += range(len(x))
        seq_lens.append(len(x))
    pad = seq_len - len(ids)
    return {
        "input_ids": ids + [pad_id] * pad,
        "labels": labels + [IGNORE] * pad,
        "position_ids": positions + list(range(pad)),
        "seq_lens": seq_lens,
    }


def block_causal_mask(
    seq_lens: Sequence[Sequence[int]], seq_len: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive attention mask [B, 1, T, T]: 0 where query t may see key s (same document,
    s <= t), the dtype's minimum elsewhere. Trailing padding forms its own block, so no row
    of the mask is fully masked (which would give NaN). Additive floats, not booleans:
    eager attention adds the mask to the scores; SDPA accepts either."""
    masks = torch.full((len(seq_lens), 1, seq_len, seq_len), torch.finfo(dtype).min, dtype=dtype)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    for row, lens in enumerate(seq_lens):
        start = 0
        for n in [*lens, seq_len - sum(lens)]:
            block = causal[:n, :n]
            masks[row, 0, start : start + n, start : start + n].masked_fill_(block, 0.0)
            start += n
    return masks


def collate_packed(
    rows: Sequence[dict], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Tensors for a batch of packed rows: input_ids, labels, position_ids [B, T] and the
    block-diagonal causal attention_mask [B, 1, T, T] in `dtype` (the model's dtype).

    transformers uses a 4-D mask as given, so this works with eager and SDPA attention on
    any device; with flash-attention, drop attention_mask and pass position_ids alone.
    """
    seq_len = len(rows[0]["input_ids"])
    return {
        "input_ids": torch.tensor([r["input_ids"] for r in rows], dtype=torch.long),
        "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long),
        "position_ids": torch.tensor([r["position_ids"] for r in rows], dtype=torch.long),
        "attention_mask": block_causal_mask([r["seq_lens"] for r in rows], seq_len, dtype),
    }
