"""What a server holds: the base LM with its adapters (behind the engine), and optionally a
classification model with its adapters.

Adapter changes are transactions. Loading reads and validates the files on the caller's
thread (`read_adapter`: config types, regexes, finite tensors), checks that the adapter
changes nothing other tenants share, and only the registration (shape checks against the
model; the attach, all-or-nothing, when the bank has room) runs on the engine thread
between steps. Where an LM adapter is afterwards — bank, memory or disk — is the
`AdapterCache`'s business. A name is reserved while its load runs and appears in the
catalog only once the load is complete. An unload is decided on the engine thread, where
every admitted request is counted.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from lorakit.adapters import attach_adapter, read_adapter
from lorakit.device import resolve_device
from lorakit.errors import ConfigError
from lorakit.infer.classify import classify
from lorakit.infer.load import adapter_task
from lorakit.lora import adapter_per_row, delete_adapter
from lorakit.models.load import load_model
from lorakit.models.quantize import quantize as quantize_base
from lorakit.serve.adapter_cache import AdapterCache
from lorakit.serve.catalog import Catalog, Entry, base_id
from lorakit.serve.engine import Engine
from lorakit.serve.errors import ApiError
from lorakit.serve.prefix import PrefixCache

CHANGE_TIMEOUT_S = 60.0  # how long a load/unload waits for the engine to take it


def _check_task(path: str | Path, want: str, confine: bool) -> list[str] | None:
    task, labels = adapter_task(path, confine=confine)
    if task is not None and task != want:
        raise ConfigError(f"{path} is a {task} adapter, not a {want} one")
    return labels


def _read_servable(path: str | Path, confine: bool):
    """Read and validate an adapter for a shared base (off the engine thread)."""
    read = read_adapter(path, confine=confine)
    if read.bias != "none":
        # such an adapter trains the base layers' own biases: attaching it would change
        # the base for every tenant, and unloading it could not give them back
        raise ConfigError(
            f"{path}: the adapter trains the base model's biases (bias={read.bias!r}), which every "
            "tenant of this server shares — serve it merged (`lorakit merge`) as a base of its own"
        )
    return read


def _read_lm(path: Path, confine: bool):
    _check_task(path, "causal-lm", confine)
    return _read_servable(path, confine)


class LanguageModel:
    def __init__(
        self,
        name: str,
        device: str,
        catalog: Catalog,
        served_name: str | None = None,
        max_loras: int = 64,
        max_cpu_loras: int = 128,
        prefix_cache_mb: float = 0.0,
        metrics=None,
        dtype: torch.dtype = torch.float32,
        quantize: str = "none",
        **engine_args,
    ):
        self.model, self.tokenizer = load_model(name, "causal-lm", dtype=dtype)
        if quantize != "none":  # before any adapter: each one is injected over the codes
            quantize_base(self.model.requires_grad_(False), quantize, inference=True)
        self.model.to(resolve_device(device)).eval()
        self.id, self.catalog = served_name or base_id(name), catalog
        catalog.add(Entry(self.id, "lm", None, None))
        config = self.model.config
        self.context = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)
        )
        self.prefix = PrefixCache(int(prefix_cache_mb * 2**20), metrics)
        self.adapters = AdapterCache(
            self.model,
            max_loras,
            max_cpu_loras,
            reader=_read_lm,
            wake=lambda: self.engine.wake(),
            metrics=metrics,
            on_evict=self.prefix.drop,
        )
        self.engine = Engine(
            self.model,
            self.tokenizer,
            adapters=self.adapters,
            prefix=self.prefix,
            max_columns=self.context,
            **engine_args,
        )
        self._resolving: dict[str, threading.Lock] = {}
        self._resolving_lock = threading.Lock()

    def add_adapter(self, name: str, path: str | Path, confine: bool = False) -> None:
        """Read and check the adapter here; register it between two engine steps (attached
        at once if the bank has room, else on first use)."""
        self.catalog.reserve(name)
        try:
            read = self.adapters.read(Path(path), confine)
            self.engine.call(
                lambda: self.adapters.register(name, Path(path), confine, read), CHANGE_TIMEOUT_S
            )
            self.catalog.add(Entry(name, "lm", self.id, str(path)))
        finally:
            self.catalog.release(name)

    def add_on_demand(self, name: str, path: Path) -> None:
        """Register an adapter a request names, once however many requests name it at once."""
        with self._resolving_lock:
            lock = self._resolving.setdefault(name, threading.Lock())
        with lock:
            try:
                if name not in self.catalog.entries:
                    self.add_adapter(name, path, confine=True)
            finally:
                with self._resolving_lock:
                    self._resolving.pop(name, None)

    def remove_adapter(self, name: str) -> None:
        def remove() -> None:
            self.catalog.remove(name)
            self.adapters.unregister(name)

        def unload() -> None:  # on the engine thread: every admitted request is counted
            using = self.engine.unload_if_unused(name, remove)
            if using:
                raise ApiError(
                    409,
                    f"adapter {name!r} is in use by {using} request(s) — retry when they finish",
                    "adapter_in_use",
                )

        self.engine.call(unload, CHANGE_TIMEOUT_S)

    def adapter_of(self, model: str) -> str | None:
        entry = self.catalog.get(model, "lm")
        return None if entry.parent is None else entry.id


class Classifier:
    def __init__(
        self,
        name: str,
        device: str,
        catalog: Catalog,
        adapters: dict[str, str],
        dtype: torch.dtype = torch.float32,
    ):
        first = next(iter(adapters.values()), None)
        labels = _check_task(first, "classification", False) if first else None
        self.model, self.tokenizer = load_model(
            name, "classification", label_names=labels, dtype=dtype
        )
        self.model.to(resolve_device(device)).eval()
        self.id, self.catalog = base_id(name), catalog
        self.lock = threading.Lock()
        config_labels = self.model.config.id2label
        self.labels = labels or [config_labels[i] for i in sorted(config_labels)]
        catalog.add(Entry(self.id, "classifier", None, None, self.labels))
        for adapter, path in adapters.items():
            self.add_adapter(adapter, path)

    def add_adapter(self, name: str, path: str | Path, confine: bool = False) -> None:
        self.catalog.reserve(name)
        try:
            labels = _check_task(path, "classification", confine) or self.labels
            if len(labels) != len(self.labels):
                raise ConfigError(
                    f"{path} has {len(labels)} labels but this classifier has {len(self.labels)} — "
                    "serve it with a classifier of the same label count"
                )
            read = _read_servable(path, confine)
            with self.lock:
                attach_adapter(self.model, read, adapter=name)
            self.catalog.add(Entry(name, "classifier", self.id, str(path), list(labels)))
        finally:
            self.catalog.release(name)

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            self.catalog.remove(name)
            delete_adapter(self.model, name)

    @torch.no_grad()
    def classify(self, model: str, texts: list[str], batch: int = 32) -> list[dict]:
        results = []
        with self.lock:  # looked up under the lock: an unload cannot come in between
            entry = self.catalog.get(model, "classifier")
            adapter = None if entry.parent is None else entry.id
            for start in range(0, len(texts), batch):
                chunk = texts[start : start + batch]
                with adapter_per_row(self.model, [adapter] * len(chunk)):
                    results += classify(self.model, self.tokenizer, chunk, entry.labels, len(chunk))
        return results
