"""The LM head gets a row-major input.

transformers' causal LMs run the head on `hidden[:, -k:, :]` when asked for the last k
positions only (`logits_to_keep`: generation's and the server's prefill). That slice keeps
the strides of the whole sequence, and torch's `F.linear` on such a 3-D input cannot fold
it into one matrix multiply: it expands the weight to [batch, in, vocab] and runs a bmm.
Measured on a 2-core AVX512-BF16 EPYC (SmolLM2's 49,152 x 576 head, the last position of
60; `benchmarks/head_slice.py`): fp32 43 / 181 / 347 ms at 8 / 32 / 64 rows against
19 / 28 / 40 ms row-major; bf16 402 / 1,884 / 4,276 ms against 5 / 11 / 13 ms, with a
432 MB copy of the expanded weight at 8 rows.

One row is the same trap in disguise: `[1, 1, hidden]` sliced from `[1, T, hidden]` counts as
contiguous (a size-1 dimension's stride is ignored), yet its batch stride is T x hidden, and
bf16's matmul then copies the whole weight (54 MB, 54 ms against 3.5 ms). So the test is
the strides, not `is_contiguous()`. Copying the k x hidden slice costs microseconds.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.lora.heads import output_head

_MARK = "_lorakit_contiguous_input"


def _row_major(x: torch.Tensor) -> bool:
    expected = 1
    for size, stride in zip(reversed(x.shape), reversed(x.stride()), strict=True):
        if stride != expected:
            return False
        expected *= size
    return True


def _contiguous(module: nn.Module, args: tuple):
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.layout != torch.strided or _row_major(x):
        return None
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])


def contiguous_head_input(model: nn.Module) -> None:
    """Make the model's LM head copy an input that is not row-major first (idempotent; no
    head: no-op). Call again after replacing the head module (quantize does)."""
    head = output_head(model)
    if head is None or getattr(head, _MARK, False):
        return
    head.register_forward_pre_hook(_contiguous)
    setattr(head, _MARK, True)
