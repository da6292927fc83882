"""The preallocated KV cache and shared-prefix reuse on tiny random models: the slot buffers
hold exactly what each row computed, through joins, leaves and trims; prompts that reuse
stored prefix blocks get the tokens (and logits) they get without reuse; blocks never cross
from one adapter to another."""

import threading

import pytest
import torch

import lorakit
from lorakit.serve import kv, prefill
from lorakit.serve.engine import Engine, Request
from lorakit.serve.prefix import BLOCK, PrefixCache
from lorakit.serve.slots import COLUMN_BLOCK, ROW_BLOCK, SlotCache
from tiny_models import randomize_adapters, tiny_gemma3, tiny_gpt2, tiny_llama
from tiny_tokenizer import make_tokenizer

TOK = make_tokenizer()


def _rows(lengths, seed=0, layers=2, heads=2, dim=4):
    """A left-padded BatchCache whose values identify (row, column) exactly."""
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    pairs = [
        (
            torch.randn(len(lengths), heads, T, dim, generator=gen),
            torch.randn(len(lengths), heads, T, dim, generator=gen),
        )  # fmt: skip
        for _ in range(layers)
    ]
    return kv.BatchCache(pairs, mask)


def _real(batch_k, mask_row):
    return batch_k[:, mask_row.bool()]


def test_slots_hold_each_row_exactly_through_joins_leaves_and_growth():
    slots = SlotCache(max_rows=40, max_columns=4096)
    first, second = _rows([3, 7, 5], seed=1), _rows([90, 2], seed=2)  # the second is longer
    slots.add(first)
    slots.add(second)
    want = [(first, i) for i in range(3)] + [(second, i) for i in range(2)]

    def check(order):
        L = slots.length
        for pos, (src, i) in enumerate(order):
            for layer, (k, _) in enumerate(src.layers):
                got = _real(slots.keys[layer][pos, :, :L], slots.mask[pos, :L])
                assert torch.equal(got, _real(k[i], src.mask[i]))

    check(want)
    assert slots.length == 90 and slots.mask.shape[1] % COLUMN_BLOCK == 0
    # a decode step appends one column for every row, in place
    keys_before = slots.keys[0].data_ptr()
    slots.reserve_step(1)
    new = torch.full((5, 2, 1, 4), 7.0)
    k, v = slots.write(0, new, new)
    assert k.shape == (5, 2, 91, 4) and torch.equal(k[:, :, -1:], new)
    assert slots.keys[0].data_ptr() == keys_before  # no reallocation within capacity
    slots.step_mask(1)
    slots.commit(1)
    # the long row leaves: rows are compacted, and the columns only it used are trimmed
    order = slots.remove({3})
    assert order == [0, 1, 2, 4]
    assert slots.length == 91 - COLUMN_BLOCK  # 83 padding columns: one whole block dropped
    assert slots.mask[:4, : slots.length].sum(1).tolist() == [4, 8, 6, 3]
    assert torch.all(slots.keys[0][:4, :, slots.length - 1] == 7.0)
    # all rows leave: the buffers are given back
    slots.remove(set(range(4)))
    assert slots.keys == [] and slots.rows == 0


def test_slot_capacity_grows_in_blocks_and_stays_bounded():
    slots = SlotCache(max_rows=10, max_columns=100)
    slots.add(_rows([5] * 9))
    assert slots.mask.shape == (min(10, ROW_BLOCK * 2), COLUMN_BLOCK)
    slots.add(_rows([97]))
    rows, cols = slots.mask.shape
    assert rows == 10 and cols == 100  # capped at --max-batch-size and the context


def test_a_slot_reused_after_a_non_finite_row_is_clean():
    slots = SlotCache(max_rows=8, max_columns=512)
    bad = _rows([6])
    bad.layers[0][1].fill_(float("nan"))
    slots.add(_rows([40]))
    slots.add(bad)
    slots.remove({1})
    slots.add(_rows([2], seed=5))
    L = slots.length
    assert torch.isfinite(slots.values[0][1, :, :L]).all()  # padding zeroed, not left over


def _model(factory, adapters=("a", "b")):
    model = factory()
    for i, name in enumerate(adapters):
        lorakit.inject(model, lorakit.LoraConfig(r=4, alpha=8), adapter=name)
        randomize_adapters(model, std=0.3, seed=i + 1)
    return model


def _cached_engine(factory, tmp_path, prefix, **kw):
    """An engine whose adapters come through a real AdapterCache (read from saved files),
    as in the server: the cache says whose prefix blocks a row may reuse."""
    from lorakit.adapters import read_adapter
    from lorakit.serve.adapter_cache import AdapterCache

    trained = _model(factory)
    paths = {n: lorakit.save_adapter(trained, tmp_path / n, adapter=n) for n in ("a", "b")}
    model = factory()
    holder = {}
    cache = AdapterCache(model, 4, 8, reader=lambda p, c: read_adapter(p, confine=c),
                         wake=lambda: holder["engine"].wake(), on_evict=prefix.drop)  # fmt: skip
    engine = holder["engine"] = Engine(model, TOK, adapters=cache, prefix=prefix, **kw)
    for name, path in paths.items():
        read = cache.read(path, False)
        engine.call(lambda n=name, p=path, r=read: cache.register(n, p, False, r))
    return engine


def _run(engine, jobs):
    out = []
    for prompt, adapter, n in jobs:
        done = threading.Event()
        req = Request(prompt, adapter, n, emit=lambda e, d=done: e.finish_reason and d.set())
        engine.submit(req)
        assert done.wait(60)
        out.append(req.generated)
    return out


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_gemma3])
def test_prefix_reuse_gives_the_tokens_of_the_plain_path(factory, tmp_path):
    torch.manual_seed(0)
    header = torch.randint(3, 90, (2 * BLOCK + 5,)).tolist()  # a shared "system prompt"
    tails = [torch.randint(3, 90, (n,)).tolist() for n in (1, 4, 9)]
    jobs = [(header + t, a, 6) for t in tails for a in (None, "a", "b")]
    jobs += [(header[: 2 * BLOCK + 1], None, 6), (header[:BLOCK], "a", 6)]  # block edges
    plain = Engine(_model(factory), TOK)
    plain.eos = set()
    try:
        want = _run(plain, jobs)
    finally:
        plain.close()
    prefix = PrefixCache(64 * 2**20)
    reuse = _cached_engine(factory, tmp_path, prefix)
    reuse.eos = set()
    try:
        got = _run(reuse, jobs)
        again = _run(reuse, jobs)
    finally:
        reuse.close()
    assert got == want and again == want
    assert prefix.hit_tokens >= 2 * BLOCK * (len(jobs) + 3)  # the header was reused
    assert 0 < prefix.bytes <= prefix.budget


def test_reused_prefix_logits_match_a_full_prefill(tmp_path):
    torch.manual_seed(3)
    prompts = [torch.randint(3, 90, (n,)).tolist() for n in (2 * BLOCK + 3, BLOCK + 1, 5)]
    rows = [Request(p, "a", 1, emit=lambda e: None) for p in prompts]
    prefix = PrefixCache(2**26)
    engine = _cached_engine(tiny_llama, tmp_path, prefix)
    plain = Engine(_model(tiny_llama), TOK)
    try:
        full, _ = engine.call(lambda: engine._prefill_forward(rows))
        assert prefix.hit_tokens == 0
        reused, packed = engine.call(lambda: engine._prefill_forward(rows))
        assert prefix.hit_tokens == 3 * BLOCK  # 2 blocks of the first prompt, 1 of the second
        alone, packed_plain = plain.call(lambda: plain._prefill_forward(rows))
    finally:
        engine.close()
        plain.close()
    torch.testing.assert_close(reused, full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reused, alone, atol=1e-4, rtol=1e-4)
    # the packed cache the rows join with holds the same keys as without reuse
    assert torch.equal(packed.mask, packed_plain.mask)
    for (k, _), (k2, _) in zip(packed.layers, packed_plain.layers, strict=True):
        m = packed.mask[:, None, :, None]
        torch.testing.assert_close(k * m, k2 * m, atol=1e-5, rtol=1e-5)


def test_an_evicted_adapter_takes_its_prefix_blocks_along(tmp_path):
    prefix = PrefixCache(2**26)
    engine = _cached_engine(tiny_llama, tmp_path, prefix)
    cache = engine.adapters
    try:
        prompt = list(range(3, 3 + 2 * BLOCK + 2))
        _run(engine, [(prompt, "a", 2), (prompt, "b", 2), (prompt, None, 2)])
        owners = set(prefix.owners.values())
        assert owners == {"base", cache.owner("a"), cache.owner("b")}
        engine.call(lambda: cache.unregister("a"))
        assert set(prefix.owners.values()) == {"base", cache.owner("b")}
    finally:
        engine.close()


def test_prefix_blocks_belong_to_their_owner_and_respect_the_budget():
    layers = [(torch.randn(2, 3 * BLOCK, 4), torch.randn(2, 3 * BLOCK, 4))]
    ids = list(range(3 * BLOCK + 1))
    one_block = 2 * 2 * BLOCK * 4 * 4  # K and V, 2 heads, BLOCK columns, dim 4, fp32
    cache = PrefixCache(2 * one_block)
    cache.store("a#1", ids[:-1], layers)
    assert len(cache.blocks) == 2 and cache.bytes == 2 * one_block  # 3 blocks, room for 2
    assert cache.lookup("b#1", ids) == []  # another adapter never sees a's blocks
    assert cache.lookup("a#2", ids) == []  # nor does a's next attachment
    cache2 = PrefixCache(8 * one_block)
    cache2.store("a#1", ids[:-1], layers)
    found = cache2.lookup("a#1", ids)
    assert len(found) == 3
    assert torch.equal(found[1][0][0], layers[0][0][:, BLOCK : 2 * BLOCK])
    assert len(cache2.lookup("a#1", ids[: 2 * BLOCK])) == 1  # the last token is computed
    other = ids[:BLOCK] + [999] + ids[BLOCK + 1 :]
    assert len(cache2.lookup("a#1", other)) == 1  # a different token ends the run
    cache2.drop("a#1")
    assert cache2.bytes == 0 and cache2.lookup("a#1", ids) == []


def test_pack_moves_real_columns_right():
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    k = torch.arange(3 * 5, dtype=torch.float).reshape(3, 1, 5, 1)
    packed = prefill.pack(kv.BatchCache([(k, k.clone())], mask))
    assert packed.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    got = packed.layers[0][0][:, 0, :, 0]
    assert got[0, 2:].tolist() == [1.0, 2.0, 4.0]
    assert got[1].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert got[2, 4].item() == 14.0
