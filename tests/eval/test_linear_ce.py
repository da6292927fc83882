"""The chunked linear cross-entropy equals head + F.cross_entropy in value and in every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorakit.eval import linear_ce
from lorakit.eval.linear_ce import linear_cross_entropy


def _inputs(n=37, h=16, v=50, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100  # some positions carry no label
    return hidden, weight, b, labels


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_elements", [50 * 7, 50 * 64, 1 << 24])  # 7 rows, 64, all
def test_value_and_gradients_match_the_plain_loss(monkeypatch, reduction, chunk_elements):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(linear_ce, "chunk_rows", lambda v: max(1, linear_ce.CHUNK_ELEMENTS // v))
    hidden, weight, bias, labels = _inputs()
    ours = linear_cross_entropy(hidden, weight, labels, bias, reduction) * 3.0
    ours.backward()
    got = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    ref = F.cross_entropy(F.linear(hidden, weight, bias), labels, reduction=reduction) * 3.0
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(got, (hidden.grad, weight.grad, bias.grad), strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-10, atol=1e-12)
    assert got[0][::5].abs().max() == 0  # unlabelled rows get no gradient


def test_frozen_head_gets_no_gradient_and_hidden_does():
    hidden, weight, _, labels = _inputs(bias=False)
    weight.requires_grad_(False)
    linear_cross_entropy(hidden, weight, labels).backward()
    ref_h = hidden.grad.clone()
    hidden.grad = None
    F.cross_entropy(F.linear(hidden, weight), labels).backward()
    assert weight.grad is None
    assert torch.allclose(ref_h, hidden.grad, atol=1e-12)


def test_no_grad_gives_the_loss_only():
    hidden, weight, bias, labels = _inputs()
    with torch.no_grad():
        ours = linear_cross_entropy(hidden, weight, labels, bias)
        ref = F.cross_entropy(F.linear(hidden, weight, bias), labels)
    assert not ours.requires_grad
    assert torch.allclose(ours, ref, atol=1e-12)


def test_fp32_matches_fp64_reference():
    hidden, weight, bias, labels = _inputs(n=300, h=64, v=1000)
    ref = F.cross_entropy(F.linear(hidden, weight, bias), labels)
    h32, w32, b32 = (t.detach().float().requires_grad_() for t in (hidden, weight, bias))
    ours = linear_cross_entropy(h32, w32, labels, b32)
    ours.backward()
    ref.backward()
    assert abs(ours.item() - ref.item()) / ref.item() < 1e-5
    rel = (h32.grad.double() - hidden.grad).norm() / hidden.grad.norm()
    assert rel < 1e-5
    assert h32.grad.dtype == torch.float32 and w32.grad.dtype == torch.float32


def test_all_positions_ignored_gives_zero_not_nan():
    hidden, weight, bias, labels = _inputs()
    labels[:] = -100
    loss = linear_cross_entropy(hidden, weight, labels, bias)
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad.abs().max() == 0


@pytest.mark.parametrize("bias", [False, True])
def test_a_quantized_head_is_read_a_block_of_rows_at_a_time(monkeypatch, bias):
    """A frozen int8 head (lorakit.models.quantize) stands in for the weight: same loss and
    hidden-state gradient as its dequantized weight, and the weight is never built whole."""
    from lorakit.models import quant_layers
    from lorakit.models.quant_codec import quantize_int8
    from lorakit.models.quant_layers import Int8Linear

    hidden, weight, b, labels = _inputs(h=32, v=300, bias=bias)
    hidden, b = hidden.detach().float(), None if b is None else b.detach().float()
    head = Int8Linear(*quantize_int8(weight.detach().float()), b)
    reference = hidden.clone().requires_grad_(True)
    expected = F.cross_entropy(F.linear(reference, head.dequantized(), b), labels)
    expected.backward()

    monkeypatch.setattr(quant_layers, "CHUNK", 32 * 64)  # 64 vocabulary rows per block
    assert len(head.row_blocks()) == 5

    def whole(*args):
        raise AssertionError("the whole head was dequantized")

    monkeypatch.setattr(Int8Linear, "dequantized", whole)
    hidden.requires_grad_(True)
    loss = linear_cross_entropy(hidden, head, labels, head.bias)
    loss.backward()
    assert abs(loss.item() - expected.item()) < 1e-5
    assert torch.allclose(hidden.grad, reference.grad, atol=1e-6)


@pytest.mark.parametrize("chunk_elements", [50 * 7, 1 << 24])  # 7 rows per chunk, all at once
def test_per_token_nll_of_a_frozen_head_matches_the_plain_one(monkeypatch, chunk_elements):
    # what DPO / ORPO sum per sequence: each row's loss, each row's own gradient weight
    from lorakit.eval.linear_ce import linear_token_nll

    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(linear_ce, "chunk_rows", lambda v: max(1, linear_ce.CHUNK_ELEMENTS // v))
    hidden, weight, bias, labels = _inputs()
    weight.requires_grad_(False)
    bias.requires_grad_(False)
    labels = labels.clamp(min=0)  # every row scored
    upstream = torch.randn(len(labels), dtype=torch.float64)  # a different weight per row
    ours = linear_token_nll(hidden, weight, labels, bias)
    (ours * upstream).sum().backward()
    got = hidden.grad.clone()
    hidden.grad = None
    ref = F.cross_entropy(F.linear(hidden, weight, bias), labels, reduction="none")
    (ref * upstream).sum().backward()
    assert ours.shape == ref.shape and torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got, hidden.grad, rtol=1e-10, atol=1e-12)


def test_per_token_nll_refuses_a_head_that_trains():
    from lorakit.eval.linear_ce import linear_token_nll

    hidden, weight, bias, labels = _inputs()
    with pytest.raises(ValueError, match="frozen head"):
        linear_token_nll(hidden, weight, labels.clamp(min=0), bias)
