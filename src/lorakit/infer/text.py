"""Generated ids -> text pieces to stream, honouring stop strings, in time linear in the text.

Decoding is incremental: each step decodes only the ids since the last complete piece
(`prefix`), and the new text is what that window decodes to beyond what its first part
(`prefix:read`) already gave. Starting the window one piece early keeps tokenizers that
treat the first token of a sequence specially (SentencePiece's leading space) exact.
Text is sent only when it cannot change any more: not while it ends in an incomplete UTF-8
character, and not while its end could be the start of a stop string. Only that held-back
tail (shorter than the longest stop string) is ever searched again, so a step costs the
new text plus the stop strings' length, never the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextState:
    stop: list[str] = field(default_factory=list)
    prefix: int = 0  # ids before this were decoded into text already sent or held
    read: int = 0  # ids[prefix:read] decode to the text that window already produced
    held: str = ""  # decoded, not sent: it may begin a stop string
    pieces: list[str] = field(default_factory=list)  # what was sent

    @property
    def text(self) -> str:
        """Everything sent so far (the final text once stopped or finished)."""
        return "".join(self.pieces)

    def update(self, tokenizer, ids: list[int], final: bool) -> tuple[str, bool]:
        """(new text to send, whether a stop string was hit); `ids` only ever grows."""
        self.held += self._decode_new(tokenizer, ids, final)
        hit = _first_stop(self.held, self.stop)
        if hit is not None:
            piece, self.held = self.held[:hit], ""
        else:
            end = len(self.held) if final else len(self.held) - _hold_back(self.held, self.stop)
            piece, self.held = self.held[:end], self.held[end:]
        if piece:
            self.pieces.append(piece)
        return piece, hit is not None

    def _decode_new(self, tokenizer, ids: list[int], final: bool) -> str:
        if len(ids) <= self.read:
            return ""
        before = tokenizer.decode(ids[self.prefix : self.read], skip_special_tokens=True)
        after = tokenizer.decode(ids[self.prefix :], skip_special_tokens=True)
        if after.endswith("\ufffd") and not final:  # a multi-byte character not complete yet
            return ""
        if not after.startswith(before):  # the window decodes differently: redo it whole
            before = tokenizer.decode(ids[: self.read], skip_special_tokens=True)
            after = tokenizer.decode(ids, skip_special_tokens=True)
        self.prefix, self.read = self.read, len(ids)
        return after[len(before) :]


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [at for at in (text.find(s) for s in stops) if at != -1]
    return min(found) if found else None


def _hold_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold
