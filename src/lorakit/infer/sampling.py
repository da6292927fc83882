"""Next-token choice per row: greedy, or temperature + nucleus (top-p) sampling with the
request's own random generator, so a seeded request gives the same text in any batch."""

from __future__ import annotations

import torch


def generator_for(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample_row(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """One token id from a row of finite logits [vocab] (temperature > 0)."""
    # float64, and shifted before dividing: a tiny temperature (down to 5e-324, which is 0
    # in float32) then sends every other logit to -inf — a one-hot distribution — instead of
    # overflowing the largest to inf (inf - inf = nan) or dividing by zero
    logits = logits.double().cpu()
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above
        drop = before >= top_p
        drop[0] = False  # the first token is always kept (a top_p below float32's range is 0)
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_token(logits: torch.Tensor, greedy: int, row) -> int:
    """The next token of one row (logits [vocab]; `greedy` its argmax, computed for the
    whole batch at once); `row` has .temperature/.top_p/.generator."""
    if row.temperature > 0:
        return sample_row(logits, row.temperature, row.top_p, row.generator)
    return greedy
