"""The LM head gets a contiguous input.

transformers' causal LMs run the head on `hidden[:, -k:, :]` when asked for the last k
positions only (`logits_to_keep`: generation's and the server's prefill). That slice is not
contiguous, and torch's `F.linear` on such a 3-D input cannot fold it into one matrix
multiply: it expands the weight to [batch, in, vocab] and runs a bmm. Measured on a 2-core
AVX512-BF16 EPYC (SmolLM2's 49,152 x 576 head, the last position of 60): fp32 44 / 171 /
344 ms at 8 / 32 / 64 rows against 22 / 33 / 45 ms contiguous; bf16 506 / 1,805 / 4,605 ms
against 6 / 8 / 15 ms, with a 432 MB copy of the expanded weight at 8 rows. Copying the
k x hidden slice first costs microseconds.
"""

from __future__ import annotations

from torch import nn

from lorakit.lora.heads import output_head

_MARK = "_lorakit_contiguous_input"


def _contiguous(module: nn.Module, args: tuple):
    x = args[0] if args else None
    if x is None or not hasattr(x, "is_contiguous") or x.is_contiguous():
        return None
    return (x.contiguous(), *args[1:])


def contiguous_head_input(model: nn.Module) -> None:
    """Make the model's LM head copy a non-contiguous input first (idempotent; no head: no-op).
    Call again after replacing the head module (quantize does)."""
    head = output_head(model)
    if head is None or getattr(head, _MARK, False):
        return
    head.register_forward_pre_hook(_contiguous)
    setattr(head, _MARK, True)
