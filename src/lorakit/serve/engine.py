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
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import torch

from lorakit.errors import LorakitError
from lorakit.lora import adapter_per_row, list_adapters
from lorakit.serve import kv
from lorakit.serve.sampling import generator_for, next_token
from lorakit.serve.text import TextState

_ids = itertools.count()


class QueueFull(LorakitError):
    """More requests waiting than --max-queue allows."""


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

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.created > self.timeout


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
        self.beat = time.monotonic()  # the engine thread's last sign of life
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

    def call(self, fn: Callable, timeout: float | None = None):
        """Run fn() on the engine thread between steps (model changes); returns its result.

        If it has not started within `timeout` seconds it never runs (EngineBusy)."""
        future: Future = Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        try:
            return future.result(timeout)
        except FutureTimeout:
            if future.cancel():  # not started: it will be skipped
                raise EngineBusy(
                    f"the engine did not get to this change within {timeout:g} s — retry later"
                ) from None
            return future.result()  # running now: its result (or error) is near

    def load(self) -> tuple[int, int]:
        with self._wake:
            return len(self._waiting), len(self._rows)

    def uses(self, adapter: str) -> int:
        """Requests that name `adapter`, waiting or running. Exact on the engine thread (in a
        call): then every admitted request is in one of the two lists."""
        with self._wake:
            return sum(r.adapter == adapter for r in [*self._waiting, *self._rows])

    def health(self, stall_seconds: float) -> tuple[bool, str]:
        """(alive, why not): the thread runs and, with work to do, stepped recently."""
        if not self._thread.is_alive():
            return False, "the engine thread has stopped"
        with self._wake:
            busy = bool(self._waiting or self._rows or self._calls)
        idle_for = time.monotonic() - self.beat
        if busy and idle_for > stall_seconds:
            return False, f"the engine has made no progress for {idle_for:.0f} s"
        return True, ""

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
            self.beat = time.monotonic()
            # model changes first, then admission: a change sees every admitted request
            for fn, future in calls:
                if not future.set_running_or_notify_cancel():
                    continue  # its caller gave up waiting
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller re-raises it
                    future.set_exception(exc)
            with self._wake:
                admit = self._admit()
            try:
                if admit:
                    self._prefill(admit)
                if self._rows:
                    self._decode()
            except Exception as exc:  # a bug: end the running rows, keep serving the rest
                for req in self._rows:
                    _fail(req, f"{type(exc).__name__}: {exc}", 500, "engine_error")
                self._rows, self._cache, self._mask = [], None, None
            self.beat = time.monotonic()
        with self._wake:
            left = [*self._waiting, *self._rows]
        for req in left:
            _fail(req, "the server is shutting down", 503, "shutting_down")

    def _admit(self) -> list[Request]:
        """Waiting requests that join now (called holding the lock)."""
        admit, tokens, now = [], 0, time.perf_counter()
        known = set(list_adapters(self.model))
        while self._waiting and len(self._rows) + len(admit) < self.max_batch_size:
            req = self._waiting[0]
            if req.cancelled:  # its client left while it waited
                self._waiting.popleft()
                _emit(req, Event(finish_reason="cancelled", prompt_tokens=len(req.prompt_ids)))
                continue
            if req.expired(now):
                self._waiting.popleft()
                _fail(req, _timeout_message(req), 408, "request_timeout")
                continue
            if req.adapter is not None and req.adapter not in known:  # unloaded since
                self._waiting.popleft()
                _fail(req, f"adapter {req.adapter!r} was unloaded", 404, "model_not_found")
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
        self.beat = time.monotonic()
        if self.on_step:
            self.on_step(
                len(rows), int(mask[:, -ids.shape[1] :].sum()), time.perf_counter() - start
            )
        return logits, out.past_key_values

    def _prefill_forward(self, rows: list[Request]):
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
        return logits, kv.from_hf(cache, mask)

    def _prefill(self, rows: list[Request]) -> None:
        try:
            logits, new = self._prefill_forward(rows)
        except Exception:  # one row's fault must stay its own: prefill each alone
            for req in rows:
                try:
                    self._join([req], *self._prefill_forward([req]))
                except Exception as exc:
                    _fail(req, f"this request could not be processed ({type(exc).__name__}: {exc})",
                          500, "engine_error")  # fmt: skip
            return
        self._join(rows, logits, new)

    def _join(self, rows: list[Request], logits: torch.Tensor, new: kv.BatchCache) -> None:
        """Merge prefilled rows into the running batch and choose their first tokens."""
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
        before = kv.from_hf(self._cache, self._mask)  # the cache appends by concatenation
        try:
            logits, cache = self._forward(rows, ids, mask, positions, self._cache)
        except Exception as exc:  # drop the rows that fail alone; retry the rest next step
            self._cache = kv.to_hf(before)
            failed = [
                i
                for i, req in enumerate(rows)
                if self._decode_fails_alone(
                    before, i, ids[i : i + 1], mask[i : i + 1], positions[i : i + 1]
                )  # fmt: skip
            ]
            if not failed:
                raise exc from None
            for i in failed:
                _fail(rows[i], "this request could not be decoded", 500, "engine_error")
            self._drop(set(failed))
            return
        self._cache, self._mask = cache, mask
        self._advance(list(range(len(rows))), logits)

    def _decode_fails_alone(self, before, i, ids, mask, positions) -> bool:
        alone = kv.select(before, [i])
        try:
            self._forward([self._rows[i]], ids, mask, positions, kv.to_hf(alone))
        except Exception:
            return True
        return False

    def _advance(self, indices: list[int], logits: torch.Tensor) -> None:
        """Choose the next token of the rows at `indices`, stream it, drop finished rows.
        Whatever goes wrong with one row (non-finite logits, sampling, decoding, its
        client's callback) ends that row alone."""
        rows = [self._rows[i] for i in indices]
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        greedy = logits.argmax(-1).tolist()
        done: set[int] = set()
        now = time.perf_counter()
        for k, (i, req) in enumerate(zip(indices, rows, strict=True)):
            if not finite[k]:
                _fail(req, "the model produced non-finite logits for this request",
                      422, "non_finite_logits")  # fmt: skip
                done.add(i)
                continue
            try:
                token = next_token(logits[k], greedy[k], req)
                if self._step(req, token, now):
                    done.add(i)
            except Exception as exc:
                _fail(req, f"generation failed for this request ({type(exc).__name__}: {exc})",
                      500, "engine_error")  # fmt: skip
                done.add(i)
        self._drop(done)

    def _step(self, req: Request, token: int, now: float) -> bool:
        """Add `token` to the row, emit its new text; True if the row is finished."""
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
        if finish is None and req.expired(now):
            _emit(req, Event(text=piece))
            _fail(req, _timeout_message(req), 408, "request_timeout")
            return True
        event = Event(text=piece, finish_reason=finish)
        if finish:
            event.prompt_tokens = len(req.prompt_ids)
            event.completion_tokens = len(req.generated)
        if piece or finish:
            _emit(req, event)
        return finish is not None

    def _drop(self, done: set[int]) -> None:
        if not done:
            return
        keep = [i for i in range(len(self._rows)) if i not in done]
        batch = kv.select(kv.from_hf(self._cache, self._mask), keep) if keep else None
        self._rows = [self._rows[i] for i in keep]
        self._cache = kv.to_hf(batch) if batch else None
        self._mask = batch.mask if batch else None


def _emit(req: Request, event: Event) -> None:
    """Hand an event to the request's client; a failing callback only loses that client."""
    try:
        req.emit(event)
    except Exception:
        req.cancelled = True


def _fail(req: Request, message: str, status: int, code: str) -> None:
    req.cancelled = True
    _emit(
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


def _timeout_message(req: Request) -> str:
    return f"the request took longer than the server's --request-timeout of {req.timeout:g} s"


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids
