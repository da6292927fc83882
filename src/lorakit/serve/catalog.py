"""The names a server's API knows: every base model and adapter, each unique. A name is
reserved while its load runs and listed only once the load is complete."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import AdapterNotFoundError
from lorakit.serve.errors import ApiError


@dataclass
class Entry:
    id: str
    kind: str  # "lm" | "classifier"
    parent: str | None  # base model id for adapters
    path: str | None
    labels: list[str] | None = None
    created: int = 0


def base_id(model: str) -> str:
    return Path(model).name if ("/" in model or model.endswith(".gguf")) else model


class Catalog:
    """Names the API knows: the bases and every adapter, each unique. A name being loaded
    is reserved (a second load of it is refused) but not listed until it is usable."""

    def __init__(self):
        self.entries: dict[str, Entry] = {}
        self.pending: set[str] = set()
        self.lock = threading.Lock()

    def reserve(self, name: str) -> None:
        with self.lock:
            if name in self.entries or name in self.pending:
                raise ApiError(
                    409, f"a model named {name!r} is already loaded", "name_taken", "lora_name"
                )
            self.pending.add(name)

    def release(self, name: str) -> None:
        with self.lock:
            self.pending.discard(name)

    def add(self, entry: Entry) -> None:
        with self.lock:
            if entry.id in self.entries:
                raise ApiError(
                    409, f"a model named {entry.id!r} is already loaded", "name_taken", "lora_name"
                )
            entry.created = int(time.time())
            self.entries[entry.id] = entry

    def get(self, name: str, kind: str | None = None) -> Entry:
        entry = self.entries.get(name)
        if entry is None or (kind and entry.kind != kind):
            known = sorted(n for n, e in self.entries.items() if not kind or e.kind == kind)
            what = {"lm": "generation", "classifier": "classification"}.get(kind or "", "")
            raise AdapterNotFoundError(
                f"no {what + ' ' if what else ''}model or adapter named {name!r} — available: {known}"
            )
        return entry

    def remove(self, name: str) -> None:
        with self.lock:
            self.entries.pop(name, None)
