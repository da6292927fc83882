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
    """One token id from a row of logits [vocab] (temperature > 0)."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above
        sorted_probs[before >= top_p] = 0.0  # the first token is always kept
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(logits: torch.Tensor, rows: list) -> list[int]:
    """logits [rows, vocab] -> a token per row; each row has .temperature/.top_p/.generator."""
    greedy = logits.argmax(-1).tolist()
    return [
        sample_row(logits[i], row.temperature, row.top_p, row.generator)
        if row.temperature > 0
        else greedy[i]
        for i, row in enumerate(rows)
    ]
