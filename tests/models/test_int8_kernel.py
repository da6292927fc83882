"""The int8 Linear's two inference kernels (models/int8_kernel.py): torch's packed int8
kernel and convert-then-sgemm give the same products within bf16 rounding, the packed one
is used only where it can run (never on an inner dimension it would crash on) and only in a
model quantized for inference (never in training), and the probe's limit follows its
measurements."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lorakit
from lorakit.models import int8_kernel, quant_layers
from lorakit.models.int8_kernel import (
    converted_matmul,
    decide,
    packed_matmul,
    to_bf16_grid,
    usable,
)
from lorakit.models.quant_codec import quantize_int8
from lorakit.models.quant_layers import Int8Linear
from lorakit.models.quantize import quantize
from tiny_models import logits, randomize_adapters, rel_error, tiny_llama


def _codes(n: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return quantize_int8(torch.randn(n, k, generator=gen))


@pytest.fixture
def limit(monkeypatch):
    """Set the probe's answer: the rows limit up to which the packed kernel runs."""

    def set_limit(rows: int) -> None:
        monkeypatch.setattr(int8_kernel, "packed_rows_limit", lambda: rows)

    return set_limit


def test_the_pinned_torch_has_the_packed_kernel():
    # make test installs torch 2.13; if a later torch drops the kernel, lorakit falls back
    # to converting (usable is False) and this test says so instead of a silent slowdown
    assert int8_kernel.KERNEL is not None


@pytest.mark.parametrize("shape", [(1, 64), (5, 576), (2, 3, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_and_converted_agree_within_bf16_rounding(shape, dtype):
    q, scale = _codes(96, shape[-1])
    x = torch.randn(shape).to(dtype)
    exact = x.double() @ (q.double() * scale.double()[:, None]).T
    packed, converted = packed_matmul(x, q, scale), converted_matmul(x, q, scale)
    assert packed.shape == converted.shape == (*shape[:-1], 96)
    assert packed.dtype == converted.dtype == dtype
    assert rel_error(packed.double(), exact) < 1e-2
    assert rel_error(converted.double(), exact) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_usable_refuses_what_the_kernel_would_crash_on():
    x = torch.randn(1, 13)
    assert not usable(x, _codes(8, 13)[0])  # segfaults on an EPYC unless in % 8 == 0
    # an AMX Xeon segfaults on 2+ bf16 rows unless in % 16 == 0
    assert not usable(torch.randn(6, 40), _codes(8, 40)[0])
    assert usable(torch.randn(1, 16), _codes(8, 16)[0])
    assert usable(torch.randn(6, 48), _codes(8, 48)[0])
    assert not usable(torch.randn(1, 16), _codes(8, 16)[0].float())  # not int8 codes


_EVERY_ACCEPTED_SHAPE_RUNS = """
import torch
from lorakit.models.int8_kernel import packed_matmul, usable
for rows in (1, 2, 3, 6, 17, 64):
    for inner in (8, 16, 24, 40, 48, 584, 592):
        for out in (8, 96):
            x = torch.randn(rows, inner).bfloat16()
            q = torch.randint(-127, 128, (out, inner), dtype=torch.int8)
            if usable(x, q):
                print(rows, inner, out, flush=True)
                assert packed_matmul(x, q, torch.rand(out)).shape == (rows, out)
print("all ran", flush=True)
"""


def test_every_shape_usable_accepts_runs_on_this_cpu():
    # in a child process: a shape the guard lets through but the kernel crashes on would
    # otherwise kill the test run, and with it a user's server
    done = subprocess.run(
        [sys.executable, "-c", _EVERY_ACCEPTED_SHAPE_RUNS], capture_output=True, text=True
    )
    lines = done.stdout.split("\n")
    assert done.returncode == 0, f"kernel died after: {lines[-2:]} {done.stderr[-300:]}"
    assert lines[-2] == "all ran"
    assert len(lines) - 2 == 6 * 3 * 2  # inner 16, 48, 592 are accepted; 8, 24, 40, 584 not


def test_odd_inner_dimension_forced_packed_still_computes(limit):
    limit(1 << 30)
    q, scale = _codes(7, 13)
    layer = Int8Linear(q, scale)
    layer.inference = True
    x = torch.randn(2, 13)
    with torch.no_grad():
        y = layer(x)  # would kill the process if the packed kernel ran
    assert torch.allclose(y, converted_matmul(x, q, scale))


def test_rows_above_the_limit_and_training_use_the_converted_kernel(limit):
    q, scale = _codes(32, 64)
    layer = Int8Linear(q, scale)
    x = torch.randn(6, 64)
    limit(1 << 30)
    with torch.no_grad():  # not quantized for inference: training's math, any row count
        assert torch.equal(layer(x[:1]), converted_matmul(x[:1], q, scale))
    layer.inference = True
    limit(4)
    with torch.no_grad():
        few, many = layer(x[:4]), layer(x)
    assert torch.equal(few, packed_matmul(x[:4], q, scale))
    # above the limit: converted, with the packed kernel's bf16 roundings
    assert torch.equal(many, to_bf16_grid(converted_matmul(to_bf16_grid(x), q, scale)))


def test_a_row_gets_the_same_numbers_from_either_kernel_of_an_inference_layer():
    # what lets a served request get its solo reply in a batch larger than the limit: with
    # bf16-grid scales (quantize(..., inference=True)) the two kernels differ only by the
    # order of fp32 sums, i.e. in one bf16 step on a rare element
    gen = torch.Generator().manual_seed(0)
    q, scale = quantize_int8(torch.randn(1536, 576, generator=gen), torch.bfloat16)
    assert torch.equal(scale, to_bf16_grid(scale))
    x = torch.randn(40, 576, generator=gen)
    packed = packed_matmul(x, q, scale)
    rounded = to_bf16_grid(converted_matmul(to_bf16_grid(x), q, scale))
    assert rel_error(packed, rounded) < 1e-4
    assert (packed != rounded).float().mean() < 1e-3


def test_decide_takes_the_last_size_packed_won_at():
    assert decide([(1, 1.0, 2.0), (4, 2.0, 3.0), (16, 5.0, 4.0)]) == 4
    assert decide([(1, 2.0, 1.0)]) == 0  # lost at once: never packed
    assert decide([(r, 1.0, 2.0) for r in int8_kernel.PROBE_ROWS]) == 64


def test_the_probe_runs_and_the_environment_can_force_a_kernel(monkeypatch):
    probe = int8_kernel.packed_rows_limit
    try:
        monkeypatch.delenv(int8_kernel.ENV, raising=False)
        probe.cache_clear()
        assert probe() in (0, *int8_kernel.PROBE_ROWS)  # measured on this CPU
        for forced, expected in (("packed", 1 << 30), ("converted", 0)):
            monkeypatch.setenv(int8_kernel.ENV, forced)
            probe.cache_clear()
            assert probe() == expected
    finally:
        probe.cache_clear()  # the next caller measures again, without the variable


@pytest.mark.parametrize("tie", [False, True])
def test_a_quantized_llama_decodes_alike_with_either_kernel(limit, tie, ids):
    torch.manual_seed(0)
    model = tiny_llama(tie=tie)
    lorakit.inject(model, lorakit.LoraConfig(r=4))
    randomize_adapters(model)
    quantize(model, "int8", inference=True)
    assert model.lm_head.inference and model.model.layers[0].mlp.up_proj.base_layer.inference
    head_scale = model.lm_head._codes()[1]  # a tied head reads the embedding's
    assert torch.equal(head_scale, to_bf16_grid(head_scale))
    limit(0)
    converted = logits(model, ids)
    limit(1 << 30)
    packed = logits(model, ids)
    assert rel_error(packed, converted) < 0.01  # bf16 rounding on top of the same codes
    # each row's products are its own: one sequence alone gives its rows of the batch
    assert torch.allclose(logits(model, ids[1:2])[0], packed[1], rtol=1e-4, atol=1e-4)


def test_training_on_an_int8_base_never_takes_the_packed_kernel(limit, ids, monkeypatch):
    # the chunked cross-entropy runs the head's matmul inside an autograd Function (grad
    # off), so grad mode cannot be the switch: a training-quantized model never packs
    limit(1 << 30)
    torch.manual_seed(0)
    model = tiny_llama(tie=True)
    lorakit.inject(model, lorakit.LoraConfig(r=4))
    quantize(model, "int8")
    assert not any(getattr(m, "inference", False) for m in model.modules())
    calls = []
    spy = lambda *a: calls.append(1) or packed_matmul(*a)  # noqa: E731
    monkeypatch.setattr(quant_layers, "packed_matmul", spy)
    model(ids, labels=ids).loss.backward()
    with torch.no_grad():
        model(ids[:1, :1])
    assert calls == []
    for m in model.modules():
        m.inference = True
    with torch.no_grad():
        model(ids[:1, :1])
    assert len(calls) == 15  # 14 LoRA-wrapped Linears and the tied head
