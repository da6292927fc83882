"""Prometheus metrics of one server (its own registry, so several servers can share a process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.started = time.time()

    def on_step(self, rows: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.tokens_per_s.set(tokens / max(seconds, 1e-9))

    def render(self) -> bytes:
        return generate_latest(self.registry)
