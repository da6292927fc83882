"""A generation request as the engine sees it, the events it streams back, and how a
request is ended (a failing client callback only loses that client)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError
from lorakit.infer.text import TextState

_ids = itertools.count()


class QueueFull(LorakitError):
    """More requests waiting than --max-queue allows."""


class AdapterGone(LorakitError):
    """A request names an adapter that was unloaded after the request was resolved."""


class EngineBusy(LorakitError):
    """A model change could not start within its time limit (the engine is stuck or busy)."""


@dataclass
class Event:
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    status: int = 500  # with an error: the HTTP status it deserves (4xx: the request's fault)
    code: str | None = None


@dataclass
class Request:
    prompt_ids: list[int]
    adapter: str | None
    max_tokens: int
    emit: Callable[[Event], None]  # called from the engine thread
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    timeout: float | None = None  # seconds from creation until the request is ended
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    text: TextState | None = None
    created: float = field(default_factory=time.perf_counter)
    seen: bool = False  # counted once in the adapter cache's hits / misses

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.created > self.timeout


def emit(req: Request, event: Event) -> None:
    """Hand an event to the request's client; a failing callback only loses that client."""
    try:
        req.emit(event)
    except Exception:
        req.cancelled = True


def fail(req: Request, message: str, status: int, code: str) -> None:
    req.cancelled = True
    emit(
        req,
        Event(
            finish_reason="error",
            error=message,
            status=status,
            code=code,
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(req.generated),
        ),
    )


def timeout_message(req: Request) -> str:
    return f"the request took longer than the server's --request-timeout of {req.timeout:g} s"
