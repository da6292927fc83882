"""Continuous batching: one thread runs the model; requests join and leave between steps.

Every iteration: run queued calls (adapter load/unload), prefill newly admitted requests
in one forward (each row with its own adapter), then one decode step over all running
rows (`adapter_per_row`: base rows and any mix of adapters in one forward). Tokens are
handed to each request's `emit` callback as soon as they are chosen.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError
from lorakit.lora import adapter_per_row
from lorakit.serve import kv
from lorakit.serve.sampling import generator_for, next_tokens
from lorakit.serve.text import TextState

_ids = itertools.count()


class QueueFull(LorakitError):
    """More requests waiting than --max-queue allows."""


@dataclass
class Event:
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


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
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    text: TextState | None = None
    created: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        max_batch_size: int = 32,
        max_queue: int = 256,
        max_prefill_tokens: int = 4096,
        on_step: Callable[[int, int, float], None] | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.on_step = on_step  # (rows, new tokens, seconds) after every forward
        self.device = next(model.parameters()).device
        self.eos = _eos_ids(model, tokenizer)
        params = inspect.signature(model.forward).parameters
        self._positions = "position_ids" in params
        self._keep_last = "logits_to_keep" in params
        self._waiting: deque[Request] = deque()
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._rows: list[Request] = []
        self._cache = None  # transformers cache of the running rows
        self._mask: torch.Tensor | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)
        self._thread.start()

    # -- called from other threads ----------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"the server queue is full ({self.max_queue} waiting requests) — retry later"
                )
            request.generator = generator_for(request.seed)
            request.text = TextState(stop=list(request.stop))
            self._waiting.append(request)
            self._wake.notify()

    def call(self, fn: Callable):
        """Run fn() on the engine thread between steps (model changes); returns its result."""
        future: Future = Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future.result()

    def load(self) -> tuple[int, int]:
        with self._wake:
            return len(self._waiting), len(self._rows)

    def in_use(self, adapter: str) -> int:
        with self._wake:
            return sum(r.adapter == adapter for r in [*self._waiting, *self._rows])

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the engine thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._calls or self._waiting or self._rows):
                    self._wake.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
                admit = self._admit()
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller re-raises it
                    future.set_exception(exc)
            try:
                if admit:
                    self._prefill(admit)
                if self._rows:
                    self._decode()
            except Exception as exc:  # a bug must not hang the clients: fail their requests
                for req in [*admit, *self._rows]:
                    req.emit(Event(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
                self._rows, self._cache, self._mask = [], None, None
        for req in [*self._waiting, *self._rows]:
            req.emit(Event(finish_reason="error", error="the server is shutting down"))

    def _admit(self) -> list[Request]:
        admit, tokens = [], 0
        while self._waiting and len(self._rows) + len(admit) < self.max_batch_size:
            req = self._waiting[0]
            if req.cancelled:  # its client left while it waited
                self._waiting.popleft()
                req.emit(Event(finish_reason="cancelled", prompt_tokens=len(req.prompt_ids)))
                continue
            if admit and tokens + len(req.prompt_ids) > self.max_prefill_tokens:
                break
            admit.append(self._waiting.popleft())
            tokens += len(req.prompt_ids)
        return admit

    @torch.no_grad()
    def _forward(self, rows: list[Request], ids, mask, positions, cache):
        kwargs = dict(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        if self._positions:
            kwargs["position_ids"] = positions
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        start = time.perf_counter()
        with adapter_per_row(self.model, [r.adapter for r in rows]):
            out = self.model(**kwargs)
        logits = out.logits[:, -1, :]
        if self.on_step:
            self.on_step(
                len(rows), int(mask[:, -ids.shape[1] :].sum()), time.perf_counter() - start
            )
        return logits, out.past_key_values

    def _prefill(self, rows: list[Request]) -> None:
        length = max(len(r.prompt_ids) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, length - len(r.prompt_ids) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        logits, cache = self._forward(rows, ids, mask, positions, kv.new_hf_cache())
        new = kv.from_hf(cache, mask)
        old = kv.from_hf(self._cache, self._mask) if self._rows else None
        merged = kv.merge(old, new)
        self._rows = self._rows + rows
        self._cache, self._mask = kv.to_hf(merged), merged.mask
        self._advance(list(range(len(self._rows) - len(rows), len(self._rows))), logits)

    def _decode(self) -> None:
        rows = self._rows
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
        positions = torch.tensor(
            [[len(r.prompt_ids) + len(r.generated) - 1] for r in rows], device=self.device
        )
        ones = torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        logits, self._cache = self._forward(rows, ids, mask, positions, self._cache)
        self._mask = mask
        self._advance(list(range(len(rows))), logits)

    def _advance(self, indices: list[int], logits: torch.Tensor) -> None:
        """Choose the next token of the rows at `indices`, stream it, drop finished rows."""
        rows = [self._rows[i] for i in indices]
        done: set[int] = set()
        for i, req, token in zip(indices, rows, next_tokens(logits, rows), strict=True):
            req.generated.append(token)
            finish = None
            if token in self.eos:
                finish = "stop"
            elif len(req.generated) >= req.max_tokens:
                finish = "length"
            ids = req.generated[:-1] if token in self.eos else req.generated
            piece, stopped = req.text.update(self.tokenizer, ids, final=finish is not None)
            if stopped:
                finish = "stop"
            if req.cancelled:
                finish = finish or "cancelled"
            event = Event(text=piece, finish_reason=finish)
            if finish:
                event.prompt_tokens = len(req.prompt_ids)
                event.completion_tokens = len(req.generated)
                done.add(i)
            if piece or finish:
                req.emit(event)
        if done:
            keep = [i for i in range(len(self._rows)) if i not in done]
            batch = kv.select(kv.from_hf(self._cache, self._mask), keep)
            self._rows = [self._rows[i] for i in keep]
            self._cache = kv.to_hf(batch) if batch else None
            self._mask = batch.mask if batch else None


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids
