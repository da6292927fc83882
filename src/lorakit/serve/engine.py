"""Continuous batching: one thread runs the model; requests join and leave between steps.

Every iteration: run queued calls (adapter registration and unloading), bring the adapters
waiting requests name into the bank (`AdapterCache`), prefill newly admitted requests in
one forward (each row with its own adapter, stored prompt prefixes reused), then one decode
step over all running rows (`adapter_per_row`: base rows and any mix of adapters in one
forward) on the preallocated KV cache (`SlotCache`). Tokens are handed to each request's
`emit` callback as soon as they are chosen.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import torch

from lorakit.infer.generate import cache_kwarg, eos_ids, last_logits_only, returned_cache
from lorakit.infer.sampling import generator_for, next_token
from lorakit.infer.text import TextState
from lorakit.lora import adapter_per_row, list_adapters
from lorakit.serve import kv, prefill
from lorakit.serve.adapter_cache import AdapterCache
from lorakit.serve.prefix import PrefixCache
from lorakit.serve.request import (
    AdapterGone,
    EngineBusy,
    Event,
    QueueFull,
    Request,
    emit,
    fail,
    timeout_message,
)
from lorakit.serve.slots import SlotCache

__all__ = ["AdapterGone", "Engine", "EngineBusy", "Event", "QueueFull", "Request"]

BLOCKED_POLL_S = 0.25  # how often a queue that waits only for adapter loads checks deadlines


class Engine:
    def __init__(
        self,
        model,
        tokenizer,
        max_batch_size: int = 32,
        max_queue: int = 256,
        max_prefill_tokens: int = 4096,
        on_step: Callable[[int, int, float], None] | None = None,
        adapters: AdapterCache | None = None,
        prefix: PrefixCache | None = None,
        max_columns: int = 2048,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.on_step = on_step  # (rows, new tokens, seconds) after every forward
        # without an adapter cache, every adapter attached to the model is servable and
        # prompt prefixes are not reused (nothing tells when an adapter's weights change)
        self.adapters = adapters
        self.prefix = prefix if prefix is not None else PrefixCache(0)
        self.device = next(model.parameters()).device
        self.eos = eos_ids(model, tokenizer)
        params = inspect.signature(model.forward).parameters
        self._positions = "position_ids" in params
        self._keep_last = last_logits_only(model)
        self._cache_kwarg = cache_kwarg(model)
        self._waiting: deque[Request] = deque()
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._rows: list[Request] = []
        self._max_columns = max_columns
        self._slots = SlotCache(max_batch_size, max_columns)
        self._blocked = False  # every waiting request waits for an adapter load
        self._wake = threading.Condition()
        self._stopping = False
        self.beat = time.monotonic()  # the engine thread's last sign of life
        self._thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)
        self._thread.start()

    # -- called from other threads ----------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self._wake:
            # checked under the lock `unload_if_unused` holds: a request resolved before an
            # unload is refused here (before any response starts), never failed mid-stream
            if request.adapter is not None and request.adapter not in self._known():
                raise AdapterGone(f"adapter {request.adapter!r} was unloaded — it is not served")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"the server queue is full ({self.max_queue} waiting requests) — retry later"
                )
            request.generator = generator_for(request.seed)
            request.text = TextState(stop=list(request.stop))
            self._waiting.append(request)
            self._blocked = False
            self._wake.notify()

    def wake(self) -> None:
        """Something the waiting requests wait for is ready (an adapter was read)."""
        with self._wake:
            self._blocked = False
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

    def _known(self):
        return set(list_adapters(self.model)) if self.adapters is None else self.adapters.known

    def unload_if_unused(self, adapter: str, remove: Callable[[], None]) -> int:
        """On the engine thread (in a call): remove() unless requests name `adapter`; the
        number that do. The queue's lock is held from the count to the removal, so no request
        naming the adapter is queued in between (submit then refuses it: AdapterGone)."""
        with self._wake:
            using = self.uses(adapter)
            if not using:
                remove()
            return using

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
            busy = bool((self._waiting and not self._blocked) or self._rows or self._calls)
        idle_for = time.monotonic() - self.beat
        if busy and idle_for > stall_seconds:
            return False, f"the engine has made no progress for {idle_for:.0f} s"
        return True, ""

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        if self.adapters is not None:
            self.adapters.close()

    # -- the engine thread -------------------------------------------------------------------
    def _work(self) -> bool:
        return bool(self._calls or (self._waiting and not self._blocked) or self._rows)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._work()):
                    if not self._wake.wait(BLOCKED_POLL_S if self._waiting else None):
                        self._blocked = False  # a timed-out wait: look at the deadlines
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
            try:
                self._bring_adapters()
                with self._wake:
                    admit = self._admit()
                    self._blocked = bool(self._waiting) and not admit and not self._rows
                if admit:
                    self._prefill(admit)
                if self._rows:
                    self._decode()
            except Exception as exc:  # a bug: end the running rows, keep serving the rest
                for req in self._rows:
                    fail(req, f"{type(exc).__name__}: {exc}", 500, "engine_error")
                self._rows, self._slots = [], SlotCache(self.max_batch_size, self._max_columns)
            self.beat = time.monotonic()
        with self._wake:
            left = [*self._waiting, *self._rows]
        for req in left:
            fail(req, "the server is shutting down", 503, "shutting_down")

    def _bring_adapters(self) -> None:
        if self.adapters is None:
            return
        with self._wake:
            wanted = [r.adapter for r in self._waiting if r.adapter is not None and not r.cancelled]
        busy = {r.adapter for r in self._rows if r.adapter is not None}
        self.adapters.prepare(wanted, busy)

    def _admit(self) -> list[Request]:
        """Waiting requests that join now (called holding the lock). A request whose adapter
        is not in the bank yet stays in the queue without holding up the ones behind it."""
        admit, tokens, now = [], 0, time.perf_counter()
        cache = self.adapters
        known = self._known()
        failed = cache.take_failures() if cache is not None else {}
        keep: deque[Request] = deque()
        while self._waiting:
            req = self._waiting.popleft()
            if req.cancelled:  # its client left while it waited
                emit(req, Event(finish_reason="cancelled", prompt_tokens=len(req.prompt_ids)))
                continue
            if req.expired(now):
                fail(req, timeout_message(req), 408, "request_timeout")
                continue
            if req.adapter is not None and req.adapter not in known:  # unloaded since
                fail(req, f"adapter {req.adapter!r} was unloaded", 404, "model_not_found")
                continue
            if req.adapter in failed:
                fail(req, f"adapter {req.adapter!r} could not be loaded: {failed[req.adapter]}",
                     400, "invalid_adapter")  # fmt: skip
                continue
            if cache is not None and req.adapter is not None and not req.seen:
                req.seen = True
                cache.count(req.adapter)
            full = len(self._rows) + len(admit) >= self.max_batch_size or (
                admit and tokens + len(req.prompt_ids) > self.max_prefill_tokens
            )
            if full or (cache is not None and not cache.admissible(req.adapter)):
                keep.append(req)
                continue
            admit.append(req)
            tokens += len(req.prompt_ids)
        self._waiting = keep
        return admit

    @torch.no_grad()
    def _forward(self, rows: list[Request], ids, mask, positions, cache):
        kwargs = {
            "input_ids": ids,
            "attention_mask": mask,
            self._cache_kwarg: cache,
            "use_cache": True,
        }
        if self._positions:
            kwargs["position_ids"] = positions
        kwargs.update(self._keep_last)
        start = time.perf_counter()
        with adapter_per_row(self.model, [r.adapter for r in rows]):
            out = self.model(**kwargs)
        logits = out.logits[:, -1, :]
        self.beat = time.monotonic()
        if self.on_step:
            self.on_step(
                len(rows), int(mask[:, -ids.shape[1] :].sum()), time.perf_counter() - start
            )
        return logits, returned_cache(out)

    def _owners(self, rows: list[Request]) -> list[str | None]:
        """Whose prefix blocks each row may reuse (None: not cached)."""
        if not self.prefix.enabled:
            return [None] * len(rows)
        if self.adapters is None:
            return ["base" if r.adapter is None else None for r in rows]
        return [self.adapters.owner(r.adapter) for r in rows]

    def _prefill_forward(self, rows: list[Request]):
        owners = self._owners(rows)
        prompts = [r.prompt_ids for r in rows]
        hits = [
            self.prefix.lookup(o, p) if o is not None else []
            for o, p in zip(owners, prompts, strict=True)
        ]
        batch = prefill.build(prompts, hits, self.tokenizer.pad_token_id or 0, self.device)
        past = kv.to_hf(batch.past) if batch.past is not None else kv.new_hf_cache()
        logits, cache = self._forward(rows, batch.ids, batch.mask, batch.positions, past)
        packed = prefill.pack(kv.from_hf(cache, batch.mask))
        prefill.store(self.prefix, owners, prompts, packed)
        return logits, packed

    def _prefill(self, rows: list[Request]) -> None:
        try:
            logits, new = self._prefill_forward(rows)
        except Exception:  # one row's fault must stay its own: prefill each alone
            for req in rows:
                try:
                    self._join([req], *self._prefill_forward([req]))
                except Exception as exc:
                    fail(req, f"this request could not be processed ({type(exc).__name__}: {exc})",
                         500, "engine_error")  # fmt: skip
            return
        self._join(rows, logits, new)

    def _join(self, rows: list[Request], logits: torch.Tensor, new: kv.BatchCache) -> None:
        """Add prefilled rows to the running batch and choose their first tokens."""
        self._slots.add(new)
        self._rows = self._rows + rows
        if self.adapters is not None:
            self.adapters.touch(r.adapter for r in rows)
        self._advance(list(range(len(self._rows) - len(rows), len(self._rows))), logits)

    def _decode(self) -> None:
        rows, slots = self._rows, self._slots
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
        positions = torch.tensor(
            [[len(r.prompt_ids) + len(r.generated) - 1] for r in rows], device=self.device
        )
        slots.reserve_step(1)
        mask = slots.step_mask(1)
        try:
            logits, _ = self._forward(rows, ids, mask, positions, slots.hf_cache())
        except Exception as exc:  # drop the rows that fail alone; retry the rest next step
            failed = [  # the failed step wrote only past `length`: nothing to undo
                i
                for i in range(len(rows))
                if self._decode_fails_alone(i, ids[i : i + 1], positions[i : i + 1])
            ]
            if not failed:
                raise exc from None
            for i in failed:
                fail(rows[i], "this request could not be decoded", 500, "engine_error")
            self._drop(set(failed))
            return
        slots.commit(1)
        self._advance(list(range(len(rows))), logits)

    def _decode_fails_alone(self, i: int, ids, positions) -> bool:
        alone = self._slots.row(i)
        mask = torch.cat([alone.mask, torch.ones_like(alone.mask[:, :1])], dim=1)
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
                fail(req, "the model produced non-finite logits for this request",
                     422, "non_finite_logits")  # fmt: skip
                done.add(i)
                continue
            try:
                token = next_token(logits[k], greedy[k], req)
                if self._step(req, token, now):
                    done.add(i)
            except Exception as exc:
                fail(req, f"generation failed for this request ({type(exc).__name__}: {exc})",
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
            emit(req, Event(text=piece))
            fail(req, timeout_message(req), 408, "request_timeout")
            return True
        event = Event(text=piece, finish_reason=finish)
        if finish:
            event.prompt_tokens = len(req.prompt_ids)
            event.completion_tokens = len(req.generated)
        if piece or finish:
            emit(req, event)
        return finish is not None

    def _drop(self, done: set[int]) -> None:
        if not done:
            return
        order = self._slots.remove(done)
        self._rows = [self._rows[i] for i in order]
