import pytest
import torch

import lorakit
from tiny_models import (
    VOCAB,
    logits,
    randomize_adapters,
    tiny_bert_cls,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_mlp,
    tiny_opt,
)

TARGETS = [["q_proj", "v_proj"], "all-linear", ["q_proj", "embed_tokens"], ["o_proj", "up_proj"]]


def _many(factory, n: int, dora_every: int = 0, targets=None):
    model = factory()
    for i in range(n):
        cfg = lorakit.LoraConfig(
            r=1 + (i * 5) % 16,  # ranks differ: zero-padding in the bank is exercised
            alpha=2 + i % 7,
            target_modules=targets or TARGETS[i % len(TARGETS)],
            use_dora=bool(dora_every) and i % dora_every == 1,
            use_rslora=i % 3 == 2,
        )
        lorakit.inject(model, cfg, adapter=f"a{i}")
        randomize_adapters(model, std=0.1, seed=i)
    return model


def _alone(model, name, row):
    lorakit.set_adapter(model, name)
    return logits(model, row)


@pytest.mark.parametrize("n", [1, 8, 64])
def test_each_row_equals_running_it_alone(n):
    model = _many(tiny_llama, n, dora_every=4)
    torch.manual_seed(n)
    rows = max(n, 4) + 2
    names = [None if i % 5 == 0 else f"a{(i * 7) % n}" for i in range(rows)]
    ids = torch.randint(3, VOCAB, (rows, 6))
    with lorakit.adapter_per_row(model, names):
        batched = logits(model, ids)
    for i, name in enumerate(names):
        alone = _alone(model, name, ids[i : i + 1])
        assert torch.allclose(batched[i], alone[0], atol=1e-5), (i, name)


def test_rows_differ_by_adapter_and_base_rows_are_base():
    model = _many(tiny_llama, 2)
    ids = torch.randint(3, VOCAB, (1, 5)).repeat(3, 1)
    with lorakit.adapter_per_row(model, ["a0", "a1", None]):
        out = logits(model, ids)
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(out[2], logits(tiny_llama(), ids[:1])[0], atol=1e-6)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_opt, tiny_mlp])
def test_conv1d_and_plain_modules(factory):
    model = _many(factory, 3, targets="all-linear")
    ids = torch.randint(3, VOCAB, (4, 5))
    names = ["a2", "a0", None, "a1"]
    with lorakit.adapter_per_row(model, names):
        batched = logits(model, ids)
    for i, name in enumerate(names):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)


def test_scaled_embedding_per_row():
    """Gemma 3's embedding multiplies by embed_scale: per-row updates (plain and DoRA) too."""
    model = _many(tiny_gemma3, 4, dora_every=2, targets=["q_proj", "embed_tokens"])
    ids = torch.randint(3, VOCAB, (4, 5))
    names = ["a1", "a3", None, "a0"]
    with lorakit.adapter_per_row(model, names):
        batched = logits(model, ids)
    for i, name in enumerate(names):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_classification_heads_per_row():
    model = tiny_bert_cls()
    for i in range(3):
        lorakit.inject(
            model,
            lorakit.LoraConfig(
                r=2 + i, target_modules=["query", "value"], modules_to_save=["classifier"]
            ),
            adapter=f"c{i}",
        )
        randomize_adapters(model, seed=i)
    ids = torch.randint(3, VOCAB, (4, 7))
    names = ["c2", None, "c0", "c1"]
    with lorakit.adapter_per_row(model, names):
        batched = logits(model, ids)
    for i, name in enumerate(names):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)


def test_per_row_state_is_restored_and_errors_are_clear():
    model = _many(tiny_llama, 2)
    lorakit.set_adapter(model, "a1")
    ids = torch.randint(3, VOCAB, (2, 4))
    before = logits(model, ids)
    with lorakit.adapter_per_row(model, ["a0", None]):
        logits(model, ids)
    assert torch.equal(logits(model, ids), before)
    with pytest.raises(lorakit.AdapterNotFoundError, match="nope"):
        with lorakit.adapter_per_row(model, ["nope"]):
            pass
    with pytest.raises(lorakit.ConfigError, match="3 names but the batch has 2 rows"):
        with lorakit.adapter_per_row(model, ["a0", "a1", None]):
            logits(model, ids)
    lorakit.merge(model)
    with pytest.raises(lorakit.ConfigError, match="unmerge"):
        with lorakit.adapter_per_row(model, ["a0"]):
            pass


def test_bank_is_rebuilt_after_weights_change():
    model = _many(tiny_llama, 2)
    ids = torch.randint(3, VOCAB, (2, 4))
    with lorakit.adapter_per_row(model, ["a0", "a1"]):
        first = logits(model, ids)
    randomize_adapters(model, seed=99)  # in-place update of a trainable adapter (a1)
    with lorakit.adapter_per_row(model, ["a0", "a1"]):
        second = logits(model, ids)
    assert torch.allclose(first[0], second[0]) and not torch.allclose(first[1], second[1])
    assert torch.allclose(second[1], _alone(model, "a1", ids[1:2])[0], atol=1e-5)


def test_the_three_kernels_agree(monkeypatch):
    """grouped_mm, gather + bmm, and bmm straight on the bank give the same rows."""
    from lorakit.lora import per_row

    assert per_row._grouped_mm is not None  # torch 2.13 has it on CPU: the fast path is real
    model = _many(tiny_llama, 6, dora_every=3)
    names = ["a3", None, "a0", "a3", "a5", "a1", "a2", "a4"]
    ids = torch.randint(3, VOCAB, (len(names), 5))
    calls = []
    real = per_row._grouped_mm
    monkeypatch.setattr(per_row, "_grouped_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(per_row, "_GROUPED_MIN_ROWS", 1)
    with lorakit.adapter_per_row(model, names):
        grouped = logits(model, ids)
    assert calls
    monkeypatch.setattr(per_row, "_grouped_mm", None)
    with lorakit.adapter_per_row(model, names):
        gathered = logits(model, ids)
    assert torch.allclose(grouped, gathered, atol=1e-5)
    assert not torch.allclose(grouped[0], grouped[1], atol=1e-3)
    # one row per adapter (any row order): the bank itself is the per-row weight
    one_each = ["a2", "a0", "a5", "a1", "a4", "a3"]
    with lorakit.adapter_per_row(model, one_each):
        aligned = logits(model, ids[: len(one_each)])
    layer = model.model.layers[0].self_attn.q_proj
    group = next(iter(layer.rows.groups.values())) if layer.rows else None
    for i, name in enumerate(one_each):
        assert torch.allclose(aligned[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)
    assert group is None  # the plan is removed when the block ends


def test_kernel_choice():
    from lorakit.lora.per_row import _group

    bank = ("a", "b", "c")
    every = _group(["c", "a", "b"], bank, "cpu")
    assert every.uniform == 1 and every.all_used and every.distinct == 3 and not every.in_order
    assert every.rows.tolist() == [1, 2, 0] and every.slot.tolist() == [0, 1, 2]
    some = _group(["a", None, "a", "c"], bank, "cpu")
    assert (
        not (some.uniform == 1 and some.all_used)
        and some.distinct == 2
        and some.ends.tolist() == [2, 2, 3]
    )
    assert _group(["a", "b", "c"], bank, "cpu").in_order
    pairs = _group(["b", "a", "b", "a"], bank, "cpu")  # two rows each on two of three slots
    assert pairs.uniform == 2 and not pairs.all_used and pairs.used.tolist() == [0, 1]
    assert not (pairs.uniform == 1 and pairs.all_used) and pairs.rows.tolist() == [1, 3, 0, 2]
    assert _group(["a", "a", "b"], bank, "cpu").uniform == 0  # 2 rows and 1 row


@pytest.mark.parametrize(
    "names",
    [
        ["a1", "a1", "a4", "a4"],  # uniform, in batch order: fused baddbmm onto the base output
        ["a4", "a1", "a4", "a1"],  # uniform, rows gathered by slot
        ["a2", "a2", "a2", "a2"],  # one adapter for all rows
        ["a0", "a1", "a2", "a3", "a4", "a5"],  # every slot once: the bank as is
        ["a3", "a3", None, "a3"],  # uniform with a base row
    ],
)
@pytest.mark.parametrize("dora_every", [0, 4])
def test_equal_rows_per_adapter_match_each_row_alone(monkeypatch, names, dora_every):
    model = _many(tiny_llama, 6, dora_every=dora_every, targets=["q_proj", "v_proj", "down_proj"])
    ids = torch.randint(3, VOCAB, (len(names), 5))
    fused, real = [], torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: fused.append(1) or real(*a, **k))
    with lorakit.adapter_per_row(model, names):
        batched = logits(model, ids)
    in_order = None not in names and names == sorted(names)
    assert bool(fused) == (in_order and not dora_every)  # the fused path is taken when it can be
    for i, name in enumerate(names):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)


def test_bank_follows_replaced_and_deleted_adapters():
    model = _many(tiny_llama, 3, targets=["q_proj", "v_proj"])
    ids = torch.randint(3, VOCAB, (2, 4))
    with lorakit.adapter_per_row(model, ["a1", "a2"]):
        logits(model, ids)
    layer = model.model.layers[0].self_attn.q_proj
    layer.adapters["a1"].B = torch.nn.Parameter(torch.randn_like(layer.adapters["a1"].B))
    lorakit.delete_adapter(model, "a0")
    with lorakit.adapter_per_row(model, ["a1", "a2"]):
        batched = logits(model, ids)
    assert layer.__dict__["_bank"].names == ("a1", "a2")
    for i, name in enumerate(["a1", "a2"]):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)


def test_a_swapped_adapter_takes_the_freed_slot_and_rows_stay_exact():
    """A server's adapter cache evicts one adapter and loads another: the newcomer is
    written into the freed bank slot (no restacking), and every row still equals its
    adapter alone; a newcomer of larger rank than the bank's makes it restack."""
    model = _many(tiny_llama, 4, targets=["q_proj", "v_proj"])
    ids = torch.randint(3, VOCAB, (3, 4))
    layer = model.model.layers[0].self_attn.q_proj
    with lorakit.adapter_per_row(model, ["a0", "a1", "a2"]):
        logits(model, ids)
    bank = layer.__dict__["_bank"]
    r_max = bank.A.shape[2]
    lorakit.delete_adapter(model, "a1")
    lorakit.delete_adapter(model, "a3")
    lorakit.inject(model, lorakit.LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]),
                   adapter="n1")  # fmt: skip
    randomize_adapters(model, std=0.1, seed=77)
    names = ["n1", "a2", "a0"]
    with lorakit.adapter_per_row(model, names):
        batched = logits(model, ids)
    assert layer.__dict__["_bank"] is bank  # updated in place
    assert bank.names[1] == "n1" and bank.names[3] == ""  # a1's slot reused, a3's freed
    assert torch.count_nonzero(bank.A[3]) == 0
    for i, name in enumerate(names):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)
    lorakit.inject(model, lorakit.LoraConfig(r=r_max + 8, alpha=4,
                                             target_modules=["q_proj", "v_proj"]), adapter="big")  # fmt: skip
    randomize_adapters(model, std=0.1, seed=78)
    with lorakit.adapter_per_row(model, ["big", "n1", None]):
        batched = logits(model, ids)
    assert layer.__dict__["_bank"] is not bank and "big" in layer.__dict__["_bank"].names
    for i, name in enumerate(["big", "n1"]):
        assert torch.allclose(batched[i], _alone(model, name, ids[i : i + 1])[0], atol=1e-5)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gemma3])
def test_a_bf16_base_runs_the_bank_in_bf16_and_matches_fp32(factory):
    names = [f"a{i}" for i in range(4)]
    fp32 = _many(factory, 4, dora_every=3, targets=["q_proj", "v_proj", "embed_tokens"])
    half = factory().to(torch.bfloat16)
    for i, name in enumerate(names):
        cfg = lorakit.LoraConfig(
            r=1 + (i * 5) % 16,
            alpha=2 + i % 7,
            target_modules=["q_proj", "v_proj", "embed_tokens"],
            use_dora=i % 3 == 1,
            use_rslora=i % 3 == 2,
        )
        lorakit.inject(half, cfg, adapter=name)
    trained = {n: p for n, p in fp32.named_parameters() if ".adapters." in n}
    with torch.no_grad():
        for n, p in half.named_parameters():
            if ".adapters." in n:
                assert p.dtype == torch.float32  # adapters stay fp32 on a bf16 base
                p.copy_(trained[n])
    ids = torch.randint(3, VOCAB, (6, 7), generator=torch.Generator().manual_seed(0))
    rows = ["a0", None, "a1", "a2", "a3", "a1"]
    with lorakit.adapter_per_row(half, rows):
        batched = logits(half, ids)
    with lorakit.adapter_per_row(fp32, rows):
        want = logits(fp32, ids)
    assert batched.dtype == torch.bfloat16
    banks = [m.__dict__["_bank"] for m in half.modules() if "_bank" in m.__dict__]
    assert banks and {b.dtype for b in banks} == {torch.bfloat16}
    # bf16 rounding of weights and activations, nothing more
    scale = want.abs().max()
    assert (batched.float() - want).abs().max() < 0.05 * scale
    for i, name in enumerate(rows):  # a row alone, through the plain layer, agrees too
        alone = _alone(half, name, ids[i : i + 1])[0].float()
        assert (alone - batched[i].float()).abs().max() < 0.05 * scale, (i, name)


def test_a_classifier_head_on_a_bf16_base_is_an_fp32_copy_per_adapter():
    model = tiny_bert_cls().to(torch.bfloat16)
    for name in ("x", "y"):
        cfg = lorakit.LoraConfig(r=4, target_modules=["query"], modules_to_save=["classifier"])
        lorakit.inject(model, cfg, adapter=name)
        randomize_adapters(model, std=0.3, seed=len(name) + ord(name))
    head = model.classifier
    assert {p.dtype for p in head.original_module.parameters()} == {torch.bfloat16}
    assert {p.dtype for c in head.copies.values() for p in c.parameters()} == {torch.float32}
    ids = torch.randint(3, VOCAB, (4, 5), generator=torch.Generator().manual_seed(1))
    with lorakit.adapter_per_row(model, ["x", "y", None, "x"]):
        batched = logits(model, ids)
    for i, name in enumerate(["x", "y", None, "x"]):
        alone = _alone(model, name, ids[i : i + 1])[0]
        torch.testing.assert_close(batched[i], alone, atol=2e-2, rtol=2e-2)
    assert not torch.allclose(batched[0].float(), batched[1].float(), atol=1e-3)
    # the copy trains in fp32 from a bf16 input
    lorakit.set_adapter(model, "x")
    for p in head.copies["x"].parameters():  # injecting "y" froze "x"
        p.requires_grad_(True)
    model.train()
    model(ids).logits.float().sum().backward()
    grads = [p.grad for p in head.copies["x"].parameters()]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
