"""The LM head runs one matrix multiply on a sliced (last-positions) input, in every
precision, through load_model and after quantize / dequantize."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lorakit
from lorakit.lora.heads import output_head
from lorakit.models.head_input import contiguous_head_input
from lorakit.models.load import load_model
from lorakit.models.quantize import dequantize, quantize
from tiny_models import VOCAB, tiny_llama

IDS = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(0))


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _head_ops(model) -> tuple[list[str], torch.Tensor]:
    """The aten ops the head runs in a last-position forward, and those logits."""
    head, seen = output_head(model), {}

    def record(module, args):
        seen["ops"] = ops = _Ops()
        ops.__enter__()

    def stop(module, args, out):
        seen["ops"].__exit__(None, None, None)

    pre = head.register_forward_pre_hook(record)  # after the head's own hooks
    post = head.register_forward_hook(stop)
    try:
        with torch.no_grad():
            logits = model(input_ids=IDS, logits_to_keep=1).logits
    finally:
        pre.remove()
        post.remove()
    return seen["ops"].names, logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_sliced_head_input_is_one_matmul_with_the_same_logits(dtype):
    torch.manual_seed(0)
    # frozen, as a base is under LoRA and in inference: a weight that requires grad is folded
    stock = tiny_llama().to(dtype).eval().requires_grad_(False)
    fixed = tiny_llama().to(dtype).eval().requires_grad_(False)
    fixed.load_state_dict(stock.state_dict())
    contiguous_head_input(fixed)
    contiguous_head_input(fixed)  # idempotent: one hook
    assert len(output_head(fixed)._forward_pre_hooks) == 1
    stock_ops, stock_logits = _head_ops(stock)
    ops, logits = _head_ops(fixed)
    # torch's matmul expands the weight to [batch, in, vocab] for a sliced 3-D input
    assert "bmm" in stock_ops and "expand" in stock_ops
    assert "bmm" not in ops and "expand" not in ops
    torch.testing.assert_close(
        logits, stock_logits, rtol=0, atol=1e-2 if dtype != torch.float32 else 1e-5
    )
    with torch.no_grad():
        full = fixed(input_ids=IDS).logits[:, -1:]
    torch.testing.assert_close(logits, full, rtol=0, atol=1e-2 if dtype != torch.float32 else 1e-5)


def test_load_model_and_quantize_keep_the_head_contiguous(llama_dir):
    model, _ = load_model(llama_dir, "causal-lm")
    ops, _ = _head_ops(model.eval().requires_grad_(False))
    assert "bmm" not in ops
    lorakit.inject(model, lorakit.LoraConfig(r=4))
    quantize(model, "int8")  # replaces the head module: the hook is put back
    ops, _ = _head_ops(model)
    assert "bmm" not in ops and "expand" not in ops
    dequantize(model)
    ops, _ = _head_ops(model)
    assert "bmm" not in ops and "expand" not in ops


def _head_input_strides(model, ids) -> tuple[tuple[int, ...], torch.Tensor]:
    """The strides of the input the head computes with (after its own hooks), and the logits."""
    seen = {}

    def record(module, args):
        seen["stride"] = args[0].stride()  # returns None: the input is left as it is

    hook = output_head(model).register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, logits_to_keep=1).logits
    finally:
        hook.remove()
    return seen["stride"], logits


def test_a_one_row_slice_reaches_the_head_row_major():
    # [1, 1, hidden] cut from [1, T, hidden] passes is_contiguous() with a batch stride of
    # T x hidden, and bf16's matmul then copies the whole weight: the hook checks strides
    torch.manual_seed(0)
    stock = tiny_llama().to(torch.bfloat16).eval().requires_grad_(False)
    fixed = tiny_llama().to(torch.bfloat16).eval().requires_grad_(False)
    fixed.load_state_dict(stock.state_dict())
    contiguous_head_input(fixed)
    hidden = stock.config.hidden_size
    one = IDS[:1]
    stock_stride, stock_logits = _head_input_strides(stock, one)
    stride, logits = _head_input_strides(fixed, one)
    assert stock_stride == (one.shape[1] * hidden, hidden, 1)  # the trap is there
    assert stride == (hidden, hidden, 1)
    torch.testing.assert_close(logits, stock_logits, rtol=0, atol=0)
