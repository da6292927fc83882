"""A tiny sweep on the tiny on-disk BERT, run once per session through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Matmuls of width 32 gain nothing from threads, and lose a lot to a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data_flags(bert_dir, sentiment_csv) -> list[str]:
    return [
        "--model",
        str(bert_dir),
        "--data",
        str(sentiment_csv),
        "--text-column",
        "review",
        "--label-column",
        "mood",
        "--max-steps",
        "3",
        "--max-eval-samples",
        "24",
    ]


@pytest.fixture
def data_flags(bert_dir, sentiment_csv) -> list[str]:
    """Model, data and a 3-step budget as command-line flags."""
    return _data_flags(bert_dir, sentiment_csv)


def _sweep_args(bert_dir, sentiment_csv, out) -> list[str]:
    """Ranks 1 and 4 on both default target sets, DoRA r=2, full and head: 7 runs."""
    return [
        "compare",
        *_data_flags(bert_dir, sentiment_csv),
        "--output",
        str(out),
        "--ranks",
        "1,4",
        "--dora-rank",
        "2",
        "--lr",
        "1e-2",
        "--latency-samples",
        "4",
        "--in-process",
    ]


@pytest.fixture(scope="session")
def tiny_sweep_args(tmp_path_factory, bert_dir, sentiment_csv) -> list[str]:
    return _sweep_args(bert_dir, sentiment_csv, tmp_path_factory.mktemp("compare") / "sweep")


@pytest.fixture(scope="session")
def tiny_sweep(tiny_sweep_args):
    """The sweep directory of `lorakit compare` run with tiny_sweep_args."""
    from lorakit.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(tiny_sweep_args) == 0
    finally:
        torch.set_num_threads(before)
    return Path(tiny_sweep_args[tiny_sweep_args.index("--output") + 1])
