import random

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from lorakit.data.batching import (
    IGNORE,
    block_causal_mask,
    collate,
    collate_packed,
    length_grouped_batches,
    lengths_of,
    make_collate,
    pack,
)


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


def test_length_grouped_batches_cover_every_index_once():
    lengths = _lengths()
    batches = length_grouped_batches(lengths, 8, seed=3, mega_batch_mult=10)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert [len(b) for b in batches].count(8) == 125
    assert batches == length_grouped_batches(lengths, 8, seed=3, mega_batch_mult=10)
    assert batches != length_grouped_batches(lengths, 8, seed=4, mega_batch_mult=10)
    assert max(lengths[i] for i in batches[0]) == 200  # longest batch first: OOM shows early


def test_length_grouping_cuts_padding():
    lengths = _lengths()

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = padded(length_grouped_batches(lengths, 8, seed=0))
    rng = random.Random(0)
    order = list(range(1000))
    rng.shuffle(order)
    plain = padded([order[i : i + 8] for i in range(0, 1000, 8)])
    assert grouped < 0.7 * plain
    assert grouped < 1.05 * sum(lengths)


def test_length_grouped_without_shuffle_and_drop_last():
    lengths = [3, 9, 1, 7, 5]
    assert length_grouped_batches(lengths, 2, shuffle=False) == [[1, 3], [4, 0], [2]]
    assert length_grouped_batches(lengths, 2, shuffle=False, mega_batch_mult=1) == [
        [1, 0],
        [3, 2],
        [4],
    ]
    kept = length_grouped_batches(lengths, 2, seed=1, drop_last=True)
    assert len(kept) == 2 and all(len(b) == 2 for b in kept)
    with pytest.raises(ValueError):
        length_grouped_batches(lengths, 0)


def test_lengths_of_dataset_and_list():
    rows = [{"input_ids": [1] * n} for n in (3, 0, 5)]
    assert lengths_of(rows) == [3, 0, 5]
    assert lengths_of(Dataset.from_list(rows)) == [3, 0, 5]


def test_lengths_of_an_empty_split():
    # what prepare gives a split a small file leaves empty: columns of arrow type null
    from lorakit.data.preference import empty_pairs, pair_lengths

    empty = Dataset.from_dict({"input_ids": [], "labels": []})
    assert lengths_of(empty) == [] and lengths_of([]) == []
    assert length_grouped_batches(lengths_of(empty), 4, shuffle=False) == []
    assert pair_lengths(empty_pairs()) == []


def test_collate_pads_right_with_ignored_labels():
    out = collate(
        [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_id=0,
    )
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    left = collate(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [8]}],
        pad_id=0,
        padding_side="left",
        pad_to_multiple_of=4,
    )
    assert left["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert "labels" not in left


def test_collate_classification_labels(tokenizer):
    fn = make_collate(tokenizer)  # no pad token: falls back to eos (258)
    out = fn([{"input_ids": [1, 2], "labels": 2}, {"input_ids": [3], "labels": 0}])
    assert out["labels"].tolist() == [2, 0] and out["labels"].dtype == torch.long
    assert out["input_ids"].tolist() == [[1, 2], [3, 258]]


def test_pack_rows():
    docs = [
        {"input_ids": list(range(10 * k, 10 * k + n))} for k, n in enumerate([5, 3, 8, 0, 2, 12])
    ]
    rows = pack(docs, seq_len=10, pad_id=0)
    assert all(len(r[key]) == 10 for r in rows for key in ("input_ids", "labels", "position_ids"))
    assert sorted(n for r in rows for n in r["seq_lens"]) == [
        2,
        3,
        5,
        8,
        10,
    ]  # 12 cut to 10, empty skipped
    assert [r["seq_lens"] for r in rows] == [[10], [8, 2], [5, 3]]  # best fit, longest first
    assert rows[1]["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert rows[1]["input_ids"] == [20, 21, 22, 23, 24, 25, 26, 27, 40, 41]
    assert rows[1]["labels"] == [IGNORE, 21, 22, 23, 24, 25, 26, 27, IGNORE, 41]
    assert rows[2]["input_ids"][8:] == [0, 0] and rows[2]["labels"][8:] == [IGNORE, IGNORE]
    assert pack(Dataset.from_list(docs[:3]), 10, 0) == pack(docs[:3], 10, 0)


def test_block_causal_mask():
    mask = block_causal_mask([[2, 1]], 4)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert mask.shape == (1, 1, 4, 4) and mask.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_separate_documents(tiny_llama, attn):
    model = tiny_llama(attn)
    gen = torch.Generator().manual_seed(1)
    docs = []
    for n in [5, 17, 9, 30, 2, 11, 23, 1, 14]:
        ids = torch.randint(3, 259, (n,), generator=gen).tolist()
        labels = [t if k % 4 else IGNORE for k, t in enumerate(ids)]  # some unlabelled tokens
        docs.append({"input_ids": ids, "labels": labels})
    rows = pack(docs, seq_len=32, pad_id=0)
    assert len(rows) < len(docs)
    batch = collate_packed(rows)
    with torch.no_grad():
        packed = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        ).logits
        packed_mean = model(**batch).loss
    # each row's documents, in row order, then each document alone
    order = [i for r in rows for i in _docs_in_row(r, docs)]
    separate = []
    with torch.no_grad():
        for i in order:
            x = torch.tensor([docs[i]["input_ids"]])
            y = torch.tensor(docs[i]["labels"][1:], dtype=torch.long)
            loss = F.cross_entropy(model(input_ids=x).logits[0, :-1], y, reduction="none")
            separate.append(loss[y != IGNORE])
    targets = batch["labels"][:, 1:]
    flat = F.cross_entropy(packed[:, :-1].transpose(1, 2), targets, reduction="none")[
        targets != IGNORE
    ]
    expected = torch.cat(separate)
    torch.testing.assert_close(flat, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed_mean, expected.mean(), atol=1e-5, rtol=0)


def _docs_in_row(row, docs):
    """Indices of the documents packed into `row`, in row order (matched by their tokens)."""
    found, start = [], 0
    for n in row["seq_lens"]:
        ids = row["input_ids"][start : start + n]
        found.append(
            next(i for i, d in enumerate(docs) if d["input_ids"] == ids and i not in found)
        )
        start += n
    return found


def test_dataloader_over_an_encoded_dataset(tokenizer):
    from torch.utils.data import DataLoader

    from lorakit.data.formats import encode_text

    ds = encode_text(Dataset.from_dict({"text": ["a" * n for n in range(1, 21)]}), tokenizer)
    batches = length_grouped_batches(lengths_of(ds), 4, seed=0)
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=make_collate(tokenizer))
    seen = 0
    for batch in loader:
        real = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == real.max()  # padded to its own longest only
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
        seen += len(real)
    assert seen == 20
