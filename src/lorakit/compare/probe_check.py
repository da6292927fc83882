"""rank-probe --against SWEEP: where the recommended rank stands among a `lorakit compare`
sweep's measured ranks (same model and data), from that sweep's results.json."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import ConfigError


def _set_name(targets, target_sets: dict) -> str | None:
    for name, members in target_sets.items():
        if targets in (name, members):
            return name
    return None


def read_sweep(sweep_dir: str | Path) -> dict:
    """A `lorakit compare` directory's results.json, or a one-line error."""
    path = Path(sweep_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(
            f"--against {sweep_dir}: no results.json there — run lorakit compare first"
        )
    return json.loads(path.read_text())


def check_against_sweep(sweep_dir: str | Path, targets, r: int, metric: str) -> dict:
    """The sweep's score at rank r, its best rank, and the smallest rank within 99% of the best,
    on the sweep's LoRA runs with the probe's target set."""
    results = read_sweep(sweep_dir)
    name = _set_name(targets, results.get("target_sets", {}))
    if name is None:
        raise ConfigError(
            f"--against {sweep_dir}: the sweep has no LoRA target set equal to {targets!r} "
            f"(it has {sorted(results.get('target_sets', {}))})"
        )
    low = metric == "perplexity"
    scores = {
        e["r"]: e[metric]
        for e in results["summary"]
        if e["method"] == "lora" and e["targets"] == name and e.get(metric) is not None
    }
    if not scores:
        raise ConfigError(f"--against {sweep_dir}: no LoRA run on {name} measured {metric}")
    best_r = (min if low else max)(scores, key=scores.get)
    best = scores[best_r]
    close = [
        k for k, v in sorted(scores.items()) if (v <= best / 0.99 if low else v >= 0.99 * best)
    ]
    at_r = scores.get(r)
    share = None if at_r is None else (best / at_r if low else at_r / best)
    se = _standard_error(results["summary"], name, best_r, metric)
    return {
        "sweep": str(sweep_dir),
        "targets": name,
        "metric": metric,
        "scores": {str(k): v for k, v in sorted(scores.items())},
        "r": r,
        "score_at_r": at_r,
        "best_r": best_r,
        "best": best,
        "share_of_best": share,
        "smallest_r_within_99": close[0],
        "agrees": at_r is not None and r in close,
        "standard_error": se,
        "within_noise": at_r is not None and se is not None and abs(at_r - best) <= 2 * se,
    }


def _standard_error(summary: list[dict], targets: str, r: int, metric: str) -> float | None:
    """One binomial standard error of the best run's score (shares of correct answers only)."""
    from lorakit.compare.report import standard_error

    for e in summary:
        if e["method"] == "lora" and e["targets"] == targets and e["r"] == r:
            return standard_error(metric, e[metric], e.get("test_examples"))
    return None


def check_sentence(check: dict) -> str:
    m, r = check["metric"], check["r"]
    if check["score_at_r"] is None:
        measured = ", ".join(f"r={k}" for k in check["scores"])
        return (
            f"The sweep in {check['sweep']} did not train r={r} on {check['targets']} "
            f"(it has {measured}); its best was r={check['best_r']} ({m} {check['best']:.4f})."
        )
    if check["agrees"]:
        verdict = "agrees: the recommended rank is within 99% of the sweep's best"
    elif check.get("within_noise"):
        verdict = (
            "puts it below 99% of the best, but within two standard errors "
            f"(±{check['standard_error']:.4f} each) of it: this test set cannot tell them apart"
        )
    else:
        verdict = "disagrees: the recommended rank scored below 99% of the sweep's best"
    return (
        f"Checked against the sweep in {check['sweep']} (LoRA on {check['targets']}, same "
        f"model and data): r={r} scored {m} {check['score_at_r']:.4f}, "
        f"{100 * check['share_of_best']:.1f}% of the best, {check['best']:.4f} at "
        f"r={check['best_r']}; the smallest rank within 99% of the best was "
        f"r={check['smallest_r_within_99']}. The sweep {verdict}."
    )
