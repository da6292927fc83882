"""Generation from a prompt: its token ids, and the completion streamed piece by piece."""

from __future__ import annotations

from collections.abc import Iterator
from threading import Thread

import torch


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt. A chat template already writes the special tokens, so they are
    added only for models without one."""
    return tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]


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
    from transformers import TextIteratorStreamer

    ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=next(model.parameters()).device)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    kwargs = dict(
        **enc,
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]
