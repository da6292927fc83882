"""Prometheus metrics of one server (its own registry, so several servers can share a process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MAX_FEEDBACK_MODELS = 64  # distinct model labels of lorakit_feedback_total


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "lorakit_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "lorakit_request_seconds",
            "Request latency (streams: to the first byte)",
            ["endpoint"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.prompt_tokens = Counter("lorakit_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("lorakit_generated_tokens", "Tokens generated", registry=r)
        self.tokens_per_s = Gauge(
            "lorakit_tokens_per_second", "Tokens per second of the latest forward step", registry=r
        )
        self.batch_size = Histogram(
            "lorakit_batch_size",
            "Rows per forward step",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.queue_depth = Gauge("lorakit_queue_depth", "Requests waiting", registry=r)
        self.running = Gauge("lorakit_running_sequences", "Sequences being decoded", registry=r)
        self.adapters = Gauge("lorakit_adapters_loaded", "Adapters loaded", registry=r)
        self.feedback = Counter(
            "lorakit_feedback",
            "Feedback received by model and rating",
            ["model", "rating"],
            registry=r,
        )
        self._feedback_models: set[str] = set()
        self.adapters_resident = Gauge(
            "lorakit_adapters_resident",
            "Adapters in the per-row bank (bank) and read into memory (memory)",
            ["tier"],
            registry=r,
        )
        self.adapter_hits = Counter(
            "lorakit_adapter_cache_hits", "Requests whose adapter was in the bank", registry=r
        )
        self.adapter_misses = Counter(
            "lorakit_adapter_cache_misses", "Requests that waited for their adapter", registry=r
        )
        self.adapter_evictions = Counter(
            "lorakit_adapter_evictions", "Adapters evicted from the bank", registry=r
        )
        self.adapter_load_seconds = Histogram(
            "lorakit_adapter_load_seconds",
            "Adapter loads: reading and validating the files (read), attaching (attach)",
            ["stage"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.prefix_hit_tokens = Counter(
            "lorakit_prefix_cache_hit_tokens",
            "Prompt tokens whose keys and values came from the prefix cache",
            registry=r,
        )
        self.prefix_lookup_tokens = Counter(
            "lorakit_prefix_cache_lookup_tokens",
            "Prompt tokens looked up in the prefix cache (hit rate: hit / lookup)",
            registry=r,
        )
        self.started = time.time()

    def on_step(self, rows: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.tokens_per_s.set(tokens / max(seconds, 1e-9))

    def count_feedback(self, model: str, rating: str) -> None:
        """`model` is a catalog id, but runtime loading can add names without end: past
        MAX_FEEDBACK_MODELS distinct ones, the rest share the label "other"."""
        if model not in self._feedback_models and len(self._feedback_models) >= MAX_FEEDBACK_MODELS:
            model = "other"
        else:
            self._feedback_models.add(model)
        self.feedback.labels(model, rating).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
