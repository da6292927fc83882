"""`lorakit rank-probe`: which LoRA rank a task needs, read off a high-rank run's updates.

A short run at a high rank r0; for each layer, the singular values s_i of its update
scaling * B @ A. The effective rank at energy e is the smallest k with
sum_{i<=k} s_i^2 >= e * sum_i s_i^2: the rank that reproduces that share of the update
(in Frobenius norm). The recommendation is then trained and scored against the probe run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from lorakit.compare.config import RankProbeConfig
from lorakit.config import TrainConfig
from lorakit.eval.measure import percentile

CONFIG_FILE = "rank_probe_config.json"
# What a rank-probe directory holds at its top level (its .lorakit-run marker lists them).
PROBE_FILES = (
    CONFIG_FILE,
    "probe-r*",
    "validate-r*",
    "rank_probe.json",
    "recommendation.yaml",
    "report.md",
    "spectra.png",
)


def update_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values (descending) of scaling * B @ A, A: [r, in], B: [out, r].

    Without forming the [out, in] product: with reduced QRs B = Qb Rb and A^T = Qa Ra,
    B A = Qb (Rb Ra^T) Qa^T and Qb, Qa have orthonormal columns, so B A has the singular
    values of the small matrix Rb Ra^T (at most r x r).
    """
    _, Rb = torch.linalg.qr(B.detach().double())  # [min(out, r), r]
    _, Ra = torch.linalg.qr(A.detach().double().T)  # [min(in, r), r]
    return torch.linalg.svdvals(Rb @ Ra.T) * abs(scaling)


def effective_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest k whose top-k singular values hold `energy` of sum(s^2); 0 for a zero update."""
    e = s.double() ** 2
    total = e.sum()
    if total <= 0:
        return 0
    held = torch.cumsum(e, 0) / total
    return min(int((held < energy - 1e-12).sum()) + 1, len(s))


def pow2_ceil(x: float) -> int:
    """The smallest power of two >= x (and >= 1)."""
    n = max(1, math.ceil(x))
    return 1 << (n - 1).bit_length()


def recommend(
    ranks: dict[str, int], max_rank: int, quantile: float = 0.75, pattern: bool = True
) -> tuple[int, dict[str, int] | None]:
    """(model-wide r, rank_pattern or None) from each layer's effective rank.

    r covers `quantile` of the layers, rounded up to a power of two (the usual grid, and a
    margin: a short run understates the rank a longer one uses). The pattern lists the
    layers whose own rounded rank differs from r.
    """
    r = min(pow2_ceil(percentile(sorted(ranks.values()), 100 * quantile)), max_rank)
    if not pattern:
        return r, None
    own = {name: min(pow2_ceil(k), max_rank) for name, k in ranks.items()}
    return r, {name: k for name, k in own.items() if k != r} or None


def layer_spectra(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Singular values of every LoRA layer's update, by module name."""
    from lorakit.lora import lora_layers

    return {
        name: update_singular_values(ad.A, ad.B, ad.scaling)
        for name, layer in lora_layers(model).items()
        for ad in layer.adapters.values()
    }


def rank_probe(config: RankProbeConfig, log: Callable[[str], None] = print) -> dict:
    """Probe, recommend, validate; write report.md, spectra.png, recommendation.yaml."""
    from lorakit.compare.latency import probe_inputs
    from lorakit.compare.report import primary_metric
    from lorakit.compare.sweep import open_output, resolve_target_sets, train_or_reuse
    from lorakit.infer.load import load_for_inference
    from lorakit.train.output_dir import protected_paths

    out = Path(config.output)
    probe_cfg = config.run_config(out / f"probe-r{config.rank}", method="lora", r=config.rank)
    # Model, targets and data are checked before anything is written.
    resolve_target_sets(config.model, config.task, {"targets": config.targets})
    probe_inputs(probe_cfg, 1)
    if config.against:  # a missing sweep is an error before the training, not after
        from lorakit.compare.probe_check import read_sweep

        read_sweep(config.against)
    open_output(
        out,
        CONFIG_FILE,
        config.model_dump(mode="json"),
        config.overwrite,
        kind="rank-probe",
        files=PROBE_FILES,
        protected=protected_paths(probe_cfg),
    )

    log(f"probe: LoRA r={config.rank} on {config.targets}")
    probe_metrics, _ = train_or_reuse(probe_cfg, overwrite=config.overwrite, log=log)
    model, *_ = load_for_inference(config.model, Path(probe_cfg.output) / "adapter")
    spectra = layer_spectra(model)
    layers = []
    for name, s in spectra.items():
        layers.append(
            {
                "layer": name,
                "r90": effective_rank(s, 0.9),
                "r99": effective_rank(s, 0.99),
                "r_energy": effective_rank(s, config.energy),
                "top_singular_value": float(s[0]) if len(s) else 0.0,
                "singular_values": [float(v) for v in s],
            }
        )
    r, pattern = recommend(
        {e["layer"]: e["r_energy"] for e in layers}, config.rank, config.quantile, config.pattern
    )
    for e in layers:
        s = torch.tensor(e["singular_values"])
        k = (pattern or {}).get(e["layer"], r)
        e["energy_at_recommended_r"] = float((s[:k] ** 2).sum() / (s**2).sum()) if s.any() else 1.0
    fields = {"method": "lora", "r": r, "rank_pattern": pattern}
    if pattern and config.alpha is None and "alpha_pattern" in TrainConfig.model_fields:
        # alpha = 2 * r per layer too, so every layer keeps the probe's scaling of 2
        fields["alpha_pattern"] = {name: 2 * k for name, k in pattern.items()}
    rec_cfg = config.run_config(out / f"validate-r{r}", **fields)
    log(
        f"recommended r={r}"
        + (f" with a rank_pattern for {len(pattern)} layers" if pattern else "")
    )

    metric = primary_metric([probe_metrics["test"]], config.task)
    validation = None
    if config.validate_run:
        log(f"validation: LoRA r={r}, same data, steps and seed")
        val_metrics, _ = train_or_reuse(rec_cfg, overwrite=config.overwrite, log=log)
        validation = _compare(metric, probe_metrics, val_metrics)
    against = None
    if config.against:
        from lorakit.compare.probe_check import check_against_sweep

        against = check_against_sweep(config.against, config.targets, r, metric)
    result = {
        "config": config.model_dump(mode="json"),
        "metric": metric,
        "probe": _run_summary(probe_metrics, config.rank, metric),
        "layers": layers,
        "recommendation": {
            "r": r,
            "alpha": rec_cfg.alpha,
            "rank_pattern": pattern,
            "alpha_pattern": fields.get("alpha_pattern"),
        },
        "validation": validation,
        "against_sweep": against,
    }
    from lorakit.compare.probe_report import write_probe_outputs

    write_probe_outputs(out, config, rec_cfg, result)
    return result


def _run_summary(metrics: dict, r: int, metric: str) -> dict:
    return {
        "r": r,
        metric: metrics["test"].get(metric),
        "trainable_params": metrics["trainable_params"],
        "train_seconds": metrics["train_seconds"],
        "artifact_bytes": metrics["artifact_bytes"],
    }


def _compare(metric: str, probe: dict, val: dict) -> dict:
    """The validation run's score as a share of the probe's (lower-is-better inverted)."""
    p, v = probe["test"].get(metric), val["test"].get(metric)
    share = None
    if p is not None and v is not None and p > 0 and v > 0:
        share = p / v if metric == "perplexity" else v / p
    return {
        metric: v,
        "probe_" + metric: p,
        "share_of_probe": share,
        "trainable_params": val["trainable_params"],
        "probe_trainable_params": probe["trainable_params"],
        "train_seconds": val["train_seconds"],
    }
