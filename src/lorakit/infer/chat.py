"""Chat: a conversation rendered with the model's chat template, and the interactive loop."""

from __future__ import annotations

from collections.abc import Callable

from lorakit.errors import ConfigError
from lorakit.infer.generate import stream


def render_chat(tokenizer, messages: list[dict]) -> str:
    if not tokenizer.chat_template:
        raise ConfigError(
            "this model's tokenizer has no chat template — use `lorakit generate` with a plain prompt"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_loop(
    model,
    tokenizer,
    read: Callable[[], str | None],
    write: Callable[[str], None],
    system: str | None = None,
    max_new_tokens: int = 256,
) -> list[dict]:
    """Interactive chat: read() a user line (None or '/exit' ends), stream the reply to write()."""
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        line = read()
        if line is None or line.strip() in ("/exit", "/quit"):
            return messages
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = ""
        for piece in stream(model, tokenizer, render_chat(tokenizer, messages), max_new_tokens):
            reply += piece
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": reply.strip()})
