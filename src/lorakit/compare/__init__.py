"""Measure: `lorakit compare` (sweeps → report.md + plots) and `lorakit rank-probe`."""

from lorakit.compare.config import CompareConfig, RankProbeConfig
from lorakit.compare.rank_probe import effective_rank, rank_probe, update_singular_values
from lorakit.compare.sweep import run_sweep

__all__ = [
    "CompareConfig",
    "RankProbeConfig",
    "effective_rank",
    "rank_probe",
    "run_sweep",
    "update_singular_values",
]
