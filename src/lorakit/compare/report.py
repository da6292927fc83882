"""A sweep's results: results.csv (one row per run), results.json, report.md and plots.

Every number in report.md, the findings included, is computed from the same rows that
results.json holds.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from lorakit.atomic import write_json, write_text
from lorakit.compare.columns import BY_KEY, COLUMNS, IDENTITY, SCORES, Column
from lorakit.compare.plots import plot_sweep


def make_row(run, metrics: dict, latency: dict) -> dict:
    """One run (a PlannedRun) as a flat row: what it trained, what it cost, how it scored."""
    test = metrics.get("test", {})
    row = {
        "name": run.name,
        "group": run.group,
        "method": run.method,
        "targets": run.targets or "",
        "r": run.r,
        "seed": run.seed,
        "steps": metrics["steps"],
        "total_params": metrics["total_params"],
        "trainable_params": metrics["trainable_params"],
        "trainable_percent": metrics["trainable_percent"],
        "artifact_mb": metrics["artifact_bytes"] / 2**20,
        "peak_memory_mb": metrics["peak_memory_mb"],
        "train_seconds": metrics["train_seconds"],
        "tokens_per_s": metrics["train_tokens_per_s"],
        "test_examples": test.get("examples"),
    }
    row.update({k: test[k] for k in SCORES if test.get(k) is not None})
    row.update(latency)
    return row


def primary_metric(rows: list[dict], task: str, override: str | None = None) -> str:
    """The score the findings rank by."""
    if override:
        if not all(override in r for r in rows):
            from lorakit.errors import ConfigError

            raise ConfigError(f"metric {override!r} was not measured — use one of {SCORES}")
        return override
    if task == "classification":
        return "accuracy"
    if all("reward_accuracy" in r for r in rows):  # what preference tuning moves
        return "reward_accuracy"
    return "exact_match" if all("exact_match" in r for r in rows) else "perplexity"


def summarize(rows: list[dict]) -> list[dict]:
    """One row per group (a run across its seeds): the mean of every column, and its std."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    summary = []
    for members in groups.values():
        entry = {k: members[0][k] for k in IDENTITY}
        entry["seeds"] = len(members)
        entry["test_examples"] = members[0].get("test_examples")
        for col in COLUMNS:
            values = [m[col.key] for m in members if m.get(col.key) is not None]
            if values:
                entry[col.key] = statistics.fmean(values)
                entry[col.key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _best(values: list[float], better: str) -> float:
    return min(values) if better == "low" else max(values)


def cell(entry: dict, col: Column) -> str:
    if col.key not in entry:
        return "-"
    text = col.fmt.format(entry[col.key])
    return text + (" ± " + col.fmt.format(entry[col.key + "_std"]) if entry["seeds"] > 1 else "")


def markdown_table(summary: list[dict]) -> str:
    """The summary as a table; the best value of each column (as shown) in bold."""
    cols = [c for c in COLUMNS if any(c.key in e for e in summary)]
    best = {}
    for c in cols:
        shown = [e[c.key] for e in summary if c.key in e]
        best[c.key] = c.fmt.format(_best(shown, c.better))
    lines = [
        "| run | method | targets | r | " + " | ".join(c.header for c in cols) + " |",
        "|" + "---|" * 4 + "---:|" * len(cols),
    ]
    for e in summary:
        cells = []
        for c in cols:
            text = cell(e, c)
            hit = c.key in e and c.fmt.format(e[c.key]) == best[c.key] and len(summary) > 1
            cells.append(f"**{text}**" if hit else text)
        r = "" if e["r"] is None else str(e["r"])
        lines.append(
            f"| {e['group']} | {e['method']} | {e['targets']} | {r} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _fmt(entry: dict, key: str) -> str:
    return BY_KEY[key].fmt.format(entry[key])


def findings(summary: list[dict], metric: str) -> str:
    """One paragraph computed from the numbers: the smallest rank near the best score, and
    what full fine-tuning costs relative to it."""
    scored = [e for e in summary if metric in e]
    if not scored:
        return f"No run has a {metric} score."
    higher = BY_KEY[metric].better == "high"
    best = max(scored, key=lambda e: e[metric] if higher else -e[metric])
    parts = [f"The best test {metric} is {_fmt(best, metric)} ({best['group']})."]
    # "within 99%": at least 0.99 x best, or for a lower-is-better score at most best / 0.99
    bar = 0.99 * best[metric] if higher else best[metric] / 0.99
    lora = [e for e in scored if e["method"] == "lora"]
    near = [e for e in lora if (e[metric] >= bar if higher else e[metric] <= bar)]
    ref = None
    if near:
        ref = min(near, key=lambda e: (e["r"], e["trainable_params"]))
        parts.append(
            f"The smallest LoRA rank within 99% of it is r={ref['r']} on the {ref['targets']} "
            f"layers ({metric} {_fmt(ref, metric)}), training {ref['trainable_params']:,.0f} "
            f"parameters ({ref['trainable_percent']:.3f}% of the model)."
        )
    elif lora:
        ref = max(lora, key=lambda e: e[metric] if higher else -e[metric])
        parts.append(
            f"No LoRA rank reached 99% of it ({metric} {BY_KEY[metric].fmt.format(bar)}); the "
            f"best LoRA run is r={ref['r']} on the {ref['targets']} layers at {_fmt(ref, metric)}."
        )
    full = next((e for e in scored if e["method"] == "full"), None)
    if full and ref:
        parts.append(
            f"Full fine-tuning scored {_fmt(full, metric)} while training "
            f"{_ratio(full, ref, 'trainable_params')} the parameters, with "
            f"{_ratio(full, ref, 'peak_memory_mb')} the peak memory, "
            f"{_ratio(full, ref, 'train_seconds')} the training time and "
            f"{_ratio(full, ref, 'artifact_mb')} the size on disk of r={ref['r']}."
        )
    parts += _noise(scored, best, metric)
    head = next((e for e in scored if e["method"] == "head"), None)
    if head:
        parts.append(f"Training the head alone scored {_fmt(head, metric)}.")
    if ref and "latency_unmerged_ms" in ref and ref.get("latency_merged_ms"):
        extra = 100 * (ref["latency_unmerged_ms"] / ref["latency_merged_ms"] - 1)
        parts.append(
            f"Unmerged, the r={ref['r']} adapter takes {_fmt(ref, 'latency_unmerged_ms')} ms "
            f"per example against {_fmt(ref, 'latency_merged_ms')} ms merged ({extra:+.1f}%)."
        )
    return " ".join(parts)


def standard_error(metric: str, score: float, n: int | None) -> float | None:
    """One binomial standard error sqrt(p (1 - p) / n) of a share of correct answers on n
    test examples; None for other metrics or an unknown n."""
    if metric not in ("accuracy", "exact_match") or not n:
        return None
    return math.sqrt(score * (1 - score) / n)


def _noise(scored: list[dict], best: dict, metric: str) -> list[str]:
    """For a share of correct answers, how far apart two scores must be to mean anything:
    one binomial standard error sqrt(p (1 - p) / n) of the best score on n test examples."""
    se = standard_error(metric, best[metric], best.get("test_examples"))
    if se is None:
        return []
    p, n = best[metric], best["test_examples"]
    close = [e["group"] for e in scored if e is not best and abs(e[metric] - p) <= 2 * se]
    named = ", ".join(close[:8]) + (f" and {len(close) - 8} more" if len(close) > 8 else "")
    return [
        f"On {n:,.0f} test examples one standard error of that score is ±{se:.4f}: "
        + (
            f"{len(close)} other run(s) score within two standard errors of it ({named}), so "
            "this test set does not tell them apart from the best."
            if close
            else "every other run is more than two standard errors below it."
        )
    ]


def _ratio(a: dict, b: dict, key: str) -> str:
    if not b.get(key):
        return "n/a ×"
    return f"{a[key] / b[key]:.1f}×"


def _csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(
    out: Path, config, target_sets: dict, rows: list[dict], plots: bool = True
) -> dict:
    """results.csv, results.json, report.md (and the PNG plots); returns results.json."""
    summary = summarize(rows)
    metric = primary_metric(rows, config.task, config.metric)
    text = findings(summary, metric)
    results = {
        "config": config.model_dump(mode="json"),
        "target_sets": target_sets,
        "metric": metric,
        "runs": rows,
        "summary": summary,
        "findings": text,
    }
    write_text(out / "results.csv", _csv(rows))
    write_json(out / "results.json", results)
    images = []
    if plots:
        images = plot_sweep(out, summary, metric)
    write_text(out / "report.md", _markdown(config, target_sets, rows, summary, text, images))
    return results


def _markdown(config, target_sets, rows, summary, text, images) -> str:
    budget = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs:g} epoch(s)"
    seeds = sorted({r["seed"] for r in rows})
    sets = "; ".join(f"{k} = {v}" for k, v in target_sets.items())
    examples = next((r["test_examples"] for r in rows if r.get("test_examples")), "?")
    lines = [
        f"# lorakit compare: {config.model} on {config.data} ({config.task})",
        "",
        f"{len(rows)} runs, each {budget} at batch size {config.batch_size}, seed(s) "
        f"{', '.join(map(str, seeds))}"
        + (f" (mean ± std over {config.seeds} seeds)" if config.seeds > 1 else "")
        + f". Target sets: {sets}. Scores are on the test split ({examples} examples). "
        "The best value of each column is in **bold**.",
        "",
        markdown_table(summary),
        "",
        "## Findings",
        "",
        text,
        "",
    ]
    if images:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    memory = (
        "the peak resident memory of the run's own process (CPU) or peak allocated CUDA memory"
        if config.isolate
        else "CUDA: peak allocated memory of the run; CPU: the peak of the whole sweep process "
        "so far (use isolate: true for per-run figures)"
    )
    lines += [
        "## How it was measured",
        "",
        f"- Peak memory: {memory}.",
        f"- Latency: median of batch-1 forward passes over {config.latency_samples} test "
        "examples (after 2 warm-up passes), with the adapter loaded unmerged, then after "
        "`lorakit.merge`; full and head runs are plain models, timed once.",
        "- Size on disk: the adapter's safetensors (full and head runs save the whole model).",
        "- Train time and tokens/s: the training loop only (no evaluation); tokens are real "
        "(non-padding) input tokens.",
        "",
    ]
    return "\n".join(lines)
