"""Generated ids -> text pieces to stream, honouring stop strings.

Text is re-decoded from all generated ids (tokenizers merge pieces across tokens), and
sent only when it cannot change any more: not while it ends in an incomplete UTF-8
character, and not while its end could be the start of a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextState:
    stop: list[str] = field(default_factory=list)
    sent: int = 0  # characters already streamed
    text: str = ""  # final text once stopped

    def update(self, tokenizer, ids: list[int], final: bool) -> tuple[str, bool]:
        """(new text to send, whether a stop string was hit)."""
        text = tokenizer.decode(ids, skip_special_tokens=True)
        hit = _first_stop(text, self.stop, self.sent)
        if hit is not None:
            text, final = text[:hit], True
        end = len(text) if final else _safe_end(text, self.stop)
        piece = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        self.text = text[: self.sent]
        return piece, hit is not None


def _first_stop(text: str, stops: list[str], sent: int) -> int | None:
    best = None
    for s in stops:
        at = text.find(s, max(0, sent - len(s) + 1))
        if at != -1 and (best is None or at < best):
            best = at
    return best


def _safe_end(text: str, stops: list[str]) -> int:
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":  # a multi-byte character not complete yet
        end -= 1
    for s in stops:  # hold back the longest tail that begins a stop string
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end
