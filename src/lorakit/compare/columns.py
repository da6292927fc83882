"""The columns of a sweep's results: which numbers a row holds, how each is shown, which
direction is better. report.md's table and the plots' axis labels both read them."""

from __future__ import annotations

from typing import NamedTuple


class Column(NamedTuple):
    key: str
    header: str
    better: str  # "low" or "high"
    fmt: str


COLUMNS = [
    Column("trainable_params", "trainable params", "low", "{:,.0f}"),
    Column("trainable_percent", "% of total", "low", "{:.3f}"),
    Column("artifact_mb", "size on disk (MB)", "low", "{:.3f}"),
    Column("peak_memory_mb", "peak memory (MB)", "low", "{:.0f}"),
    Column("train_seconds", "train time (s)", "low", "{:.2f}"),
    Column("tokens_per_s", "tokens/s", "high", "{:.0f}"),
    Column("accuracy", "accuracy", "high", "{:.4f}"),
    Column("macro_f1", "macro-F1", "high", "{:.4f}"),
    Column("exact_match", "exact match", "high", "{:.4f}"),
    Column("rouge_l", "ROUGE-L", "high", "{:.4f}"),
    Column("perplexity", "perplexity", "low", "{:.3f}"),
    # preference runs (train: {objective: dpo | orpo}): held-out pairs against the reference
    Column("reward_accuracy", "reward accuracy", "high", "{:.4f}"),
    Column("reward_margin", "reward margin", "high", "{:.4f}"),
    Column("latency_unmerged_ms", "latency unmerged (ms)", "low", "{:.2f}"),
    Column("latency_merged_ms", "latency merged (ms)", "low", "{:.2f}"),
]
BY_KEY = {c.key: c for c in COLUMNS}
SCORES = (
    "accuracy",
    "macro_f1",
    "exact_match",
    "rouge_l",
    "perplexity",
    "reward_accuracy",
    "reward_margin",
)
IDENTITY = ("group", "method", "targets", "r")
