"""rank-probe outputs: rank_probe.json, recommendation.yaml, report.md and spectra.png."""

from __future__ import annotations

from pathlib import Path

import yaml

from lorakit.atomic import write_json, write_text
from lorakit.config import TrainConfig

# Always written to recommendation.yaml, even where equal to TrainConfig's defaults,
# so the file says what it recommends on its own.
_KEEP = (
    "model",
    "task",
    "data",
    "method",
    "r",
    "alpha",
    "targets",
    "rank_pattern",
    "alpha_pattern",
)


def recommendation_yaml(rec: TrainConfig, header: list[str]) -> str:
    """A YAML file `lorakit train` reads as is: the validated run's settings."""
    full = rec.model_dump(mode="json")
    rest = rec.model_dump(
        mode="json", exclude_defaults=True, exclude={"resume", "overwrite", "output", *_KEEP}
    )
    values = {k: full[k] for k in _KEEP if full.get(k) is not None}
    values.update(rest)
    values["output"] = f"runs/train-r{rec.r}"
    body = yaml.safe_dump(values, sort_keys=False)
    return "".join(f"# {line}\n" for line in header) + body


def write_probe_outputs(out: Path, config, rec: TrainConfig, result: dict) -> None:
    from lorakit.compare.plots import plot_spectra

    metric = result["metric"]
    probe, val, recd = result["probe"], result["validation"], result["recommendation"]
    header = [
        f"lorakit rank-probe recommendation for {config.model} on {config.data}.",
        "Train it with:  lorakit train recommendation.yaml",
        validation_sentence(metric, probe, val, recd["r"]),
    ]
    write_json(out / "rank_probe.json", result)
    write_text(out / "recommendation.yaml", recommendation_yaml(rec, header))
    spectra = {e["layer"]: e["singular_values"] for e in result["layers"]}
    plot_spectra(out / "spectra.png", spectra, config.energy)
    write_text(out / "report.md", _markdown(config, result, header[-1]))


def validation_sentence(metric: str, probe: dict, val: dict | None, r: int) -> str:
    if val is None:
        return "Not validated (validate_run: false): train it and compare before relying on it."
    share = val["share_of_probe"]
    pct = f" ({100 * share:.1f}% of the probe's score)" if share is not None else ""
    return (
        f"Validated: trained with the same data, steps and seed as the probe, r={r} scored "
        f"test {metric} {_num(val[metric])} against {_num(probe[metric])} at r={probe['r']}"
        f"{pct}, training {val['trainable_params']:,} parameters instead of "
        f"{probe['trainable_params']:,}."
    )


def _pattern_note(recd: dict) -> str:
    note = "; the pattern gives each listed layer its own rounded rank"
    if recd.get("alpha_pattern"):
        return note + " and alpha (2 x its rank, so every layer keeps the probe's scaling)"
    return note + " (with the shared alpha: its scaling is alpha / its rank)"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(config, result: dict, validated: str) -> str:
    probe, recd, metric = result["probe"], result["recommendation"], result["metric"]
    budget = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs:g} epoch(s)"
    pattern = recd["rank_pattern"] or {}
    share = f"{100 * config.energy:g}%"
    lines = [
        f"# lorakit rank-probe: {config.model} on {config.data} ({config.task})",
        "",
        f"Probe: LoRA r={config.rank} on {config.targets}, {budget} at batch size "
        f"{config.batch_size}, seed {config.seed}: test {metric} {_num(probe[metric])}, "
        f"{probe['trainable_params']:,} trainable parameters.",
        "",
        "## Recommendation",
        "",
        f"**r = {recd['r']}** (alpha {recd['alpha']:g})"
        + (f", with a rank_pattern for {len(pattern)} layers" if pattern else "")
        + f": the rank holding {share} of the update's energy in "
        f"{100 * config.quantile:g}% of the layers, rounded up to a power of two"
        + (_pattern_note(recd) if pattern else "")
        + ". `recommendation.yaml` holds it: `lorakit train recommendation.yaml`.",
        "",
        "## How the recommendation was validated",
        "",
        validated,
        "",
        *_against_lines(result.get("against_sweep")),
        "## Per layer",
        "",
        "Effective rank: the smallest k whose top-k singular values of scaling·B·A hold the "
        "given share of the update's energy (sum of s_i², its squared Frobenius norm).",
        "",
        "| layer | r (90%) | r (99%) | top singular value | recommended r | energy it holds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in result["layers"]:
        k = pattern.get(e["layer"], recd["r"])
        lines.append(
            f"| {e['layer']} | {e['r90']} | {e['r99']} | {e['top_singular_value']:.4g} | {k} "
            f"| {100 * e['energy_at_recommended_r']:.1f}% |"
        )
    lines += ["", "![singular value spectra](spectra.png)", ""]
    return "\n".join(lines)


def _against_lines(check: dict | None) -> list[str]:
    if check is None:
        return []
    from lorakit.compare.probe_check import check_sentence

    scores = " · ".join(f"r={k}: {v:.4f}" for k, v in check["scores"].items())
    return [
        "## Checked against the sweep",
        "",
        check_sentence(check),
        "",
        f"Sweep {check['metric']} by rank ({check['targets']}): {scores}.",
        "",
    ]
