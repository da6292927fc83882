"""Cross-entropy of a linear head without the full logits: chunked, gradient computed in forward.

The LM head's logits are the largest tensor of a causal-LM step: [tokens, vocab] in fp32 (4 x 256
tokens x 49,152 vocab = 201 MB for SmolLM2, 525 MB for a 128k vocabulary), kept for backward
and matched by a gradient of the same size. The loss is a scalar, so its gradient with
respect to the logits is known in forward: softmax(logits) - onehot(label). This function
walks the labelled rows in chunks, computes each chunk's loss and its gradients with respect
to the hidden states (and the head weight when that trains) right away, and keeps only those;
backward just scales them by the incoming scalar. Same FLOPs as the plain head + cross-entropy,
a chunk of logits alive at a time instead of all of them (the idea of Liger's
fused-linear-cross-entropy, written here with torch ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB in fp32


def _logits(h, weight, bias, frozen: bool):
    """One chunk's logits; a quantized (frozen) head runs its own matmul."""
    if frozen:
        return weight.matmul(h) if bias is None else weight.matmul(h) + bias
    return F.linear(h, weight, bias)


def chunk_rows(vocab: int) -> int:
    return max(64, CHUNK_ELEMENTS // max(vocab, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows, grad_enabled):
        # forward runs with grad mode off: whether anyone will call backward is passed in
        want = tuple(grad_enabled and ctx.needs_input_grad[i] for i in range(3))
        acc = torch.promote_types(hidden.dtype, torch.float32)  # at least fp32 for the softmax
        total = torch.zeros((), dtype=acc, device=hidden.device)
        g_hidden = torch.empty_like(hidden) if want[0] else None
        g_weight = torch.zeros_like(weight, dtype=acc) if want[1] else None
        g_bias = torch.zeros_like(bias, dtype=acc) if want[2] else None
        frozen = not isinstance(weight, torch.Tensor)  # a quantized head: its own matmuls
        w_h = weight.to(hidden.dtype) if want[0] and not frozen else None  # one cast in all
        for s in range(0, hidden.shape[0], rows):
            h, y = hidden[s : s + rows], labels[s : s + rows]
            logits = _logits(h, weight, bias, frozen).to(acc)  # [n, vocab]
            valid = y != IGNORE
            safe = torch.where(valid, y, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if not any(want):
                continue
            # d loss / d logits = softmax - onehot, in place over the chunk's logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(y), device=y.device), safe] -= 1.0
            grad.mul_(valid[:, None])
            g = grad.to(h.dtype)
            if g_hidden is not None:
                g_hidden[s : s + rows] = weight.matmul_grad(g) if frozen else g @ w_h
            if g_weight is not None:
                g_weight += grad.T @ h.to(acc)
            if g_bias is not None:
                g_bias += grad.sum(0)
        ctx.save_for_backward(*(t for t in (g_hidden, g_weight, g_bias) if t is not None))
        ctx.present = [t is not None for t in (g_hidden, g_weight, g_bias)]
        w_dtype = None if frozen else weight.dtype
        ctx.dtypes = (hidden.dtype, w_dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) if present else None for present in ctx.present]
        out = [
            None if g is None else (g * grad_out.to(g.dtype)).to(dtype)
            for g, dtype in zip(grads, ctx.dtypes, strict=True)
        ]
        return out[0], out[1], out[2], None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels) for [N, H] hidden, [V, H] weight, [N] labels.

    Labels equal to -100 are ignored; "mean" divides by the number of the others. `weight`
    may also be a frozen quantized Linear (models/quantize.py): its `matmul` / `matmul_grad`
    then stand in for the weight, which is never dequantized whole.
    """
    vocab = weight.shape[0] if isinstance(weight, torch.Tensor) else weight.out_features
    rows = chunk_rows(vocab)
    total = _LinearCrossEntropy.apply(hidden, weight, bias, labels, rows, torch.is_grad_enabled())
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return total / (labels != IGNORE).sum().clamp(min=1)


class _LinearTokenNLL(torch.autograd.Function):
    """Per-row cross-entropy [N] of a frozen head: each row's gradient with respect to its
    hidden state is computed in forward and scaled by that row's incoming gradient in
    backward (the head takes none, so nothing else needs the logits)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows, grad_enabled):
        want = grad_enabled and ctx.needs_input_grad[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        losses = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        g_hidden = torch.empty_like(hidden) if want else None
        frozen = not isinstance(weight, torch.Tensor)
        w_h = weight.to(hidden.dtype) if want and not frozen else None
        for s in range(0, hidden.shape[0], rows):
            h, y = hidden[s : s + rows], labels[s : s + rows]
            logits = _logits(h, weight, bias, frozen).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            losses[s : s + rows] = lse - logits.gather(1, y[:, None]).squeeze(1)
            if want:
                grad = logits.sub_(lse[:, None]).exp_()  # softmax - onehot, in place
                grad[torch.arange(len(y), device=y.device), y] -= 1.0
                g = grad.to(h.dtype)
                g_hidden[s : s + rows] = weight.matmul_grad(g) if frozen else g @ w_h
        ctx.save_for_backward(*(() if g_hidden is None else (g_hidden,)))
        return losses

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.saved_tensors:
            return None, None, None, None, None, None
        (g_hidden,) = ctx.saved_tensors
        return g_hidden * grad_out[:, None].to(g_hidden.dtype), None, None, None, None, None


def linear_token_nll(
    hidden: torch.Tensor, weight, labels: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels, reduction="none") for [N, H] hidden and
    [N] labels (none of them -100), in chunks: never the [N, vocab] logits in full. The head
    (weight, bias) must be frozen: a plain tensor that needs no gradient or a quantized Linear."""
    if any(isinstance(t, torch.Tensor) and t.requires_grad for t in (weight, bias)):
        raise ValueError("linear_token_nll takes a frozen head")
    vocab = weight.shape[0] if isinstance(weight, torch.Tensor) else weight.out_features
    rows = chunk_rows(vocab)
    return _LinearTokenNLL.apply(hidden, weight, bias, labels, rows, torch.is_grad_enabled())
