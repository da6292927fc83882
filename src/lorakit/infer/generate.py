"""Generation from a prompt: its token ids, the new ids one decode step at a time, and the
completion streamed as text pieces.

lorakit's own loop rather than transformers' `generate` run in a thread behind a streamer:
a batch-1 decode step is small enough that what surrounds it counts (measured on SmolLM2 on
a 2-core CPU: `generate`'s per-step bookkeeping ~20% of a step, and the same steps ~15%
slower in a second thread than in the caller's). The choice of each token is the server's
(`sampling`), and the text is cut into pieces as the server does (`text`), so `lorakit
generate`, `chat` and a request to `lorakit serve` give the same text, sampled ones
included for the same seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import torch

from lorakit.infer.sampling import generator_for, sample_row
from lorakit.infer.text import TextState


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt. A chat template already writes the special tokens, so they are
    added only for models without one."""
    return tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def eos_ids(model, tokenizer) -> set[int]:
    """The ids that end a generation: the model's generation config's and the tokenizer's."""
    ids = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def last_logits_only(model) -> dict:
    """forward kwargs that skip the LM head on every prompt position but the last (the
    49,152-wide head on a 100-token prompt costs as much as 100 decode steps' head)."""
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: transformers 5.25 renamed
    `past_key_values` to `cache` (the old name warns, and goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name (see cache_kwarg)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def decode(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos: set[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield new token ids, greedy or sampled, until an end id (not yielded) or
    `max_new_tokens`. One forward per token over transformers' KV cache."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    generator = generator_for(seed) if temperature > 0 else None
    keep = last_logits_only(model)
    keep[cache_kwarg(model)] = DynamicCache()  # filled in place, step after step
    ids = torch.tensor([prompt_ids], device=device)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, use_cache=True, **keep)
            logits = out.logits[0, -1]
            if generator is not None:
                token = sample_row(logits, temperature, top_p, generator)
            else:
                token = int(logits.argmax())
            if token in eos:
                return
            yield token
            ids = torch.tensor([[token]], device=device)


def stream(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the completion of `prompt` piece by piece as tokens are generated."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    eos = eos_ids(model, tokenizer)
    text, new = TextState(), []
    for token in decode(model, prompt_ids, max_new_tokens, eos, temperature, top_p, seed):
        new.append(token)
        piece, _ = text.update(tokenizer, new, final=False)
        if piece:
            yield piece
    piece, _ = text.update(tokenizer, new, final=True)
    if piece:
        yield piece
