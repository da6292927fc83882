"""Human-readable evaluation output."""

from __future__ import annotations

from lorakit.eval.preference_loss import METRICS as PAIR_METRICS

KEYS = (
    "accuracy",
    "macro_f1",
    "majority_baseline",
    "perplexity",
    "exact_match",
    "rouge_l",
    "bleu",
    *PAIR_METRICS,
    "latency_p50_ms",
    "latency_p95_ms",
    "peak_memory_mb",
)


def print_eval(result: dict) -> None:
    metrics, base = result["metrics"], result.get("base_metrics")
    rows = [k for k in KEYS if k in metrics]
    header = f"{'metric':<20}{'adapter' if result.get('adapter') else 'model':>12}" + (
        f"{'base':>12}" if base else ""
    )
    where = f"{result['model']} on {result['split']} ({metrics.get('examples', '?')} examples"
    said = [result.get("precision")]
    said += [f"{result['quantize']} base"] if result.get("quantize", "none") != "none" else []
    print(where + "".join(f", {s}" for s in said if s) + ")")
    print(header)
    for key in rows:
        line = f"{key:<20}{_fmt(metrics[key]):>12}"
        if base:
            line += f"{_fmt(base.get(key)):>12}"
        print(line)
    for name, stats in (metrics.get("per_class") or {}).items():
        print(
            f"  {name:<18} precision {stats['precision']:.3f}  recall {stats['recall']:.3f}  n={stats['support']}"
        )


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
