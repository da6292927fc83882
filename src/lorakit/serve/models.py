"""What a server holds: the base LM with its adapters (behind the engine), and optionally a
classification model with its adapters. Adapter changes are validated before the model
is touched (`load_adapter` checks every tensor first), so a broken adapter is refused and
the server keeps serving."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.adapters import load_adapter
from lorakit.errors import AdapterNotFoundError, ConfigError
from lorakit.eval.infer import adapter_task, classify
from lorakit.lora import adapter_per_row, delete_adapter
from lorakit.models.load import load_model
from lorakit.serve.engine import Engine
from lorakit.serve.errors import ApiError
from lorakit.train.setup import resolve_device


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
    """Names the API knows: the bases and every adapter, each unique."""

    def __init__(self):
        self.entries: dict[str, Entry] = {}
        self.lock = threading.Lock()

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


def _check_task(path: str | Path, want: str) -> list[str] | None:
    task, labels = adapter_task(path)
    if task is not None and task != want:
        raise ConfigError(f"{path} is a {task} adapter, not a {want} one")
    return labels


class LanguageModel:
    def __init__(
        self,
        name: str,
        device: str,
        catalog: Catalog,
        served_name: str | None = None,
        **engine_args,
    ):
        self.model, self.tokenizer = load_model(name, "causal-lm")
        self.model.to(resolve_device(device)).eval()
        self.id, self.catalog = served_name or base_id(name), catalog
        catalog.add(Entry(self.id, "lm", None, None))
        config = self.model.config
        self.context = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)
        )
        self.engine = Engine(self.model, self.tokenizer, **engine_args)

    def add_adapter(self, name: str, path: str | Path) -> None:
        _check_task(path, "causal-lm")
        self.catalog.add(Entry(name, "lm", self.id, str(path)))
        try:
            self.engine.call(lambda: load_adapter(self.model, path, adapter=name))
        except BaseException:
            self.catalog.remove(name)
            raise

    def remove_adapter(self, name: str) -> None:
        using = self.engine.in_use(name)
        if using:
            raise ApiError(
                409,
                f"adapter {name!r} is in use by {using} request(s) — retry when they finish",
                "adapter_in_use",
            )
        self.catalog.remove(name)
        self.engine.call(lambda: delete_adapter(self.model, name))

    def adapter_of(self, model: str) -> str | None:
        entry = self.catalog.get(model, "lm")
        return None if entry.parent is None else entry.id


class Classifier:
    def __init__(self, name: str, device: str, catalog: Catalog, adapters: dict[str, str]):
        first = next(iter(adapters.values()), None)
        labels = _check_task(first, "classification") if first else None
        self.model, self.tokenizer = load_model(name, "classification", label_names=labels)
        self.model.to(resolve_device(device)).eval()
        self.id, self.catalog = base_id(name), catalog
        self.lock = threading.Lock()
        config_labels = self.model.config.id2label
        self.labels = labels or [config_labels[i] for i in sorted(config_labels)]
        catalog.add(Entry(self.id, "classifier", None, None, self.labels))
        for adapter, path in adapters.items():
            self.add_adapter(adapter, path)

    def add_adapter(self, name: str, path: str | Path) -> None:
        labels = _check_task(path, "classification") or self.labels
        if len(labels) != len(self.labels):
            raise ConfigError(
                f"{path} has {len(labels)} labels but this classifier has {len(self.labels)} — "
                "serve it with a classifier of the same label count"
            )
        self.catalog.add(Entry(name, "classifier", self.id, str(path), list(labels)))
        try:
            with self.lock:
                load_adapter(self.model, path, adapter=name)
        except BaseException:
            self.catalog.remove(name)
            raise

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            self.catalog.remove(name)
            delete_adapter(self.model, name)

    @torch.no_grad()
    def classify(self, model: str, texts: list[str], batch: int = 32) -> list[dict]:
        entry = self.catalog.get(model, "classifier")
        adapter = None if entry.parent is None else entry.id
        results = []
        with self.lock:
            for start in range(0, len(texts), batch):
                chunk = texts[start : start + batch]
                with adapter_per_row(self.model, [adapter] * len(chunk)):
                    results += classify(self.model, self.tokenizer, chunk, entry.labels, len(chunk))
        return results
