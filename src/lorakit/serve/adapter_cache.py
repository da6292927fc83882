"""Where a served adapter is: in the bank, in memory, or only on disk.

- **Bank** (at most --max-loras): attached to the model, so rows can use it in a forward.
- **Memory** (at most --max-cpu-loras): read and validated (`ReadAdapter`), ready to attach
  without touching the disk.
- **Disk**: known by name and directory only.

A request naming an adapter outside the bank waits in the queue (others go on) while it
is read (on a loader thread, never the engine's) and then attached between two steps. A
full bank makes room by evicting its least recently used adapter that has no rows in
flight. When every resident adapter is busy, the least recently used one stops taking new
rows (it *drains*), so a waiting adapter gets a slot as soon as that one's rows finish.
Everything here except `register`'s file reading and the loader runs on the engine thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lorakit.adapters import ReadAdapter, attach_adapter, check_attachable
from lorakit.errors import LorakitError
from lorakit.lora import delete_adapter


@dataclass
class Known:
    path: Path
    confine: bool


class AdapterCache:
    def __init__(
        self,
        model,
        max_loras: int,
        max_cpu_loras: int,
        reader: Callable[[Path, bool], ReadAdapter],
        wake: Callable[[], None],
        metrics=None,
        on_evict: Callable[[str], None] = lambda owner: None,
    ):
        self.model, self.reader, self.wake, self.metrics = model, reader, wake, metrics
        self.max_loras, self.max_cpu_loras = max_loras, max_cpu_loras
        self.on_evict = on_evict  # owner key of an adapter leaving the bank (prefix blocks)
        self.known: dict[str, Known] = {}
        self.memory: OrderedDict[str, ReadAdapter] = OrderedDict()  # least recent first
        self.bank: OrderedDict[str, str] = OrderedDict()  # name -> owner key, least recent first
        self.draining: set[str] = set()
        self.loading: set[str] = set()
        self.failed: dict[str, str] = {}
        self.lock = threading.Lock()  # memory / loading / failed: shared with the loader
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="lorakit-adapter-load")
        self._attachments = 0

    # -- any thread ---------------------------------------------------------------------------------
    def read(self, path: Path, confine: bool) -> ReadAdapter:
        start = time.perf_counter()
        read = self.reader(path, confine)
        self._observe("read", time.perf_counter() - start)
        return read

    def status(self, name: str) -> str:
        if name in self.bank:
            return "bank"
        return "memory" if name in self.memory else "disk"

    # -- engine thread --------------------------------------------------------------------------------
    def register(self, name: str, path: Path, confine: bool, read: ReadAdapter) -> None:
        """Make `name` servable: checked against the model now (a mismatch is the caller's
        error), attached if the bank has room, else kept in memory."""
        check_attachable(self.model, read)
        self.known[name] = Known(path, confine)
        if len(self.bank) < self.max_loras:
            self._attach(name, read)
        else:
            self._remember(name, read)
        self._gauges()

    def unregister(self, name: str) -> None:
        self.known.pop(name, None)
        with self.lock:
            self.memory.pop(name, None)
            self.failed.pop(name, None)
        if name in self.bank:
            self._evict(name)
        self._gauges()

    def owner(self, name: str | None) -> str:
        """The key of what computes a row's keys and values (prefix blocks are per owner)."""
        return "base" if name is None else self.bank[name]

    def admissible(self, name: str | None) -> bool:
        return name is None or (name in self.bank and name not in self.draining)

    def take_failures(self) -> dict[str, str]:
        with self.lock:
            failed, self.failed = self.failed, {}
        return failed

    def prepare(self, wanted: Iterable[str], busy: set[str]) -> None:
        """Between steps: bring the adapters waiting requests name into the bank — attach
        what is in memory, start reading what is not — evicting idle ones to make room."""
        self.draining = set()
        busy = set(busy)
        missing = [n for n in dict.fromkeys(wanted) if n in self.known and n not in self.bank]
        for name in missing:
            with self.lock:
                read = self.memory.get(name)
                if read is None:
                    if name not in self.loading and name not in self.failed:
                        self.loading.add(name)
                        self._loader.submit(self._load, name, self.known[name])
                    continue
            if len(self.bank) >= self.max_loras and not self._make_room(busy, set(missing)):
                break
            try:
                self._attach(name, read)
                busy.add(name)  # not a victim for the next one in this pass
            except LorakitError as exc:  # the files changed to something that does not fit
                with self.lock:
                    self.memory.pop(name, None)
                    self.failed[name] = str(exc)
        self._gauges()

    def count(self, name: str) -> None:
        """A request for `name` was seen: a hit if it was in the bank."""
        if self.metrics is not None:
            (self.metrics.adapter_hits if name in self.bank else self.metrics.adapter_misses).inc()

    def touch(self, names: Iterable[str | None]) -> None:
        for name in names:
            if name in self.bank:
                self.bank.move_to_end(name)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------------------
    def _make_room(self, busy: set[str], wanted: set[str]) -> bool:
        idle = [n for n in self.bank if n not in busy]
        if idle:  # prefer one no waiting request asks for
            victim = next((n for n in idle if n not in wanted), idle[0])
            self._evict(victim)
            return True
        self.draining.add(next(iter(self.bank)))
        return False

    def _attach(self, name: str, read: ReadAdapter) -> None:
        start = time.perf_counter()
        attach_adapter(self.model, read, adapter=name)
        self._observe("attach", time.perf_counter() - start)
        self._attachments += 1
        self.bank[name] = f"{name}#{self._attachments}"
        self._remember(name, read)

    def _evict(self, name: str) -> None:
        owner = self.bank.pop(name)
        delete_adapter(self.model, name)
        self.on_evict(owner)
        if self.metrics is not None:
            self.metrics.adapter_evictions.inc()

    def _remember(self, name: str, read: ReadAdapter) -> None:
        with self.lock:
            self.memory[name] = read
            self.memory.move_to_end(name)
            while len(self.memory) > self.max_cpu_loras:
                self.memory.popitem(last=False)

    def _load(self, name: str, known: Known) -> None:  # the loader thread
        try:
            read = self.read(known.path, known.confine)
        except Exception as exc:  # the request that needed it gets the error
            with self.lock:
                self.failed[name] = str(exc).replace(str(known.path), name)
        else:
            if name in self.known:
                self._remember(name, read)
        finally:
            with self.lock:
                self.loading.discard(name)
            self.wake()

    def _observe(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.adapter_load_seconds.labels(stage).observe(seconds)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.adapters_resident.labels("bank").set(len(self.bank))
            self.metrics.adapters_resident.labels("memory").set(len(self.memory))
