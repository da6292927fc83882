"""Hold a serving engine still: its thread runs a model change that waits on a gate, so
nothing is admitted or decoded until the block ends (for deterministic queue tests)."""

from __future__ import annotations

import contextlib
import threading


@contextlib.contextmanager
def held(engine):
    gate, entered = threading.Event(), threading.Event()

    def hold():
        entered.set()
        gate.wait()

    holder = threading.Thread(target=engine.call, args=(hold,))
    holder.start()
    assert entered.wait(10), "the engine did not take the holding call"
    try:
        yield
    finally:
        gate.set()
        holder.join(10)
