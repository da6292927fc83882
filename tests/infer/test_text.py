from lorakit.infer.text import TextState
from tiny_tokenizer import make_tokenizer

TOK = make_tokenizer()


def _ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def _stream(text: str, stop: list[str]) -> tuple[list[str], bool, str]:
    state, pieces, ids = TextState(stop=stop), [], _ids(text)
    for n in range(1, len(ids) + 1):
        piece, hit = state.update(TOK, ids[:n], final=n == len(ids))
        pieces.append(piece)
        if hit:
            return pieces, True, state.text
    return pieces, False, state.text


def test_pieces_add_up_to_the_text_without_stops():
    pieces, hit, text = _stream("héllo wörld ✓", [])
    assert not hit and "".join(pieces) == text == "héllo wörld ✓"
    assert all("\ufffd" not in p for p in pieces)  # half a character is never sent


def test_stop_string_cuts_the_text_and_is_never_sent():
    pieces, hit, text = _stream("one two END three", ["END"])
    assert hit and text == "one two " and "".join(pieces) == "one two "
    assert not any("E" in p for p in pieces)  # 'E' could begin 'END': held back, then dropped


def test_a_held_back_prefix_is_released_when_it_is_not_a_stop():
    pieces, hit, text = _stream("EN is not END", ["END!"])
    assert not hit and "".join(pieces) == "EN is not END"


def test_earliest_of_several_stops_wins():
    _, hit, text = _stream("abc\n\nxyz STOP", ["STOP", "\n\n"])
    assert hit and text == "abc"


class _Counting:
    """The tokenizer, counting the ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, **kw):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kw)


def test_streaming_work_is_linear_in_the_text():
    ids = _ids("lorem ipsum dolor sit amet, " * 80)  # 2,240 tokens, no stop ever matches
    counting, state = _Counting(TOK), TextState(stop=["x" * 200, "ipsum dolor sit amet!"])
    pieces = [
        state.update(counting, ids[:n], final=n == len(ids))[0] for n in range(1, len(ids) + 1)
    ]
    assert "".join(pieces) == TOK.decode(ids)
    assert counting.decoded < 4 * len(ids)  # re-decoding everything each step: ~len^2 / 2
