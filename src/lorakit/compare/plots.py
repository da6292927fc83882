"""PNG plots of a sweep and of rank-probe spectra (matplotlib, files only)."""

from __future__ import annotations

import re
from pathlib import Path

from lorakit.atomic import write_file
from lorakit.compare.columns import BY_KEY

METHOD_COLORS = {"lora": "tab:blue", "dora": "tab:purple", "full": "tab:red", "head": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    # complete-or-absent, like every other output
    write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _label(key: str) -> str:
    return BY_KEY[key].header


def plot_metric_vs_params(path: Path, summary: list[dict], metric: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in summary:
        if metric not in e:
            continue
        ax.errorbar(
            e["trainable_params"],
            e[metric],
            yerr=e.get(metric + "_std") or None,
            fmt="o",
            color=METHOD_COLORS.get(e["method"], "black"),
        )
        ax.annotate(e["group"], (e["trainable_params"], e[metric]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{_label(metric)} vs trainable parameters")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_vs_rank(path: Path, summary: list[dict], key: str) -> Path:
    """`key` by LoRA rank: a line per target set, DoRA as points, full / head as levels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sets = list(dict.fromkeys(e["targets"] for e in summary if e["method"] == "lora"))
    for set_name in sets:
        pts = sorted(
            (e["r"], e[key], e.get(key + "_std") or 0.0)
            for e in summary
            if e["method"] == "lora" and e["targets"] == set_name and key in e
        )
        if pts:
            r, y, err = zip(*pts, strict=True)
            ax.errorbar(r, y, yerr=err if any(err) else None, marker="o", label=f"LoRA {set_name}")
    for e in summary:
        if key not in e:
            continue
        if e["method"] == "dora":
            ax.plot([e["r"]], [e[key]], "s", color=METHOD_COLORS["dora"], label=e["group"])
        elif e["method"] in ("full", "head"):
            ax.axhline(e[key], ls="--", color=METHOD_COLORS[e["method"]], label=e["group"])
    ax.set_xscale("log", base=2)
    ranks = sorted({e["r"] for e in summary if e["r"] is not None})
    ax.set_xticks(ranks, [str(r) for r in ranks])  # 1, 2, 4 rather than 2^0, 2^1, 2^2
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel(_label(key))
    ax.set_title(f"{_label(key)} vs rank")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_sweep(out: Path, summary: list[dict], metric: str) -> list[Path]:
    """metric_vs_params.png, metric_vs_rank.png, memory_vs_rank.png, time_vs_rank.png."""
    has_rank = any(e["method"] in ("lora", "dora") for e in summary)
    paths = [plot_metric_vs_params(out / "metric_vs_params.png", summary, metric)]
    if has_rank:
        paths.append(plot_vs_rank(out / "metric_vs_rank.png", summary, metric))
        paths.append(plot_vs_rank(out / "memory_vs_rank.png", summary, "peak_memory_mb"))
        paths.append(plot_vs_rank(out / "time_vs_rank.png", summary, "train_seconds"))
    return paths


def _kind(name: str) -> str:
    """A layer's name without its block: 'model.layers.3.mlp.down_proj' → 'mlp.down_proj'."""
    return re.sub(r"^.*?\.\d+\.", "", name)


def plot_spectra(path: Path, spectra: dict[str, list[float]], energy: float) -> Path:
    """Per layer: normalised singular values, and the cumulative energy they hold."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    kinds = sorted({_kind(name) for name in spectra})
    cmap = plt.get_cmap("tab20")
    color = {k: cmap(i % 20) for i, k in enumerate(kinds)}
    for name, s in spectra.items():
        if not s or s[0] <= 0:
            continue
        c = color[_kind(name)]
        k = range(1, len(s) + 1)
        left.plot(k, [v / s[0] for v in s], color=c, alpha=0.5, lw=0.8)
        total = sum(v * v for v in s)
        cum, acc = [], 0.0
        for v in s:
            acc += v * v
            cum.append(acc / total)
        right.plot(k, cum, color=c, alpha=0.5, lw=0.8)
    for kind in kinds:  # one legend entry per layer kind, not per layer
        right.plot([], [], color=color[kind], label=kind)
    left.set_yscale("log")
    left.set_xlabel("index i")
    left.set_ylabel("s_i / s_1")
    left.set_title("Singular values of each layer's update")
    for level in sorted({energy, 0.99}):
        right.axhline(level, ls="--", color="black", lw=0.8)
    right.set_xscale("log", base=2)
    ticks = [2**i for i in range(max(len(s) for s in spectra.values()).bit_length())]
    right.set_xticks(ticks, [str(t) for t in ticks])
    right.set_xlabel("rank k")
    right.set_ylabel("share of the update's energy in the top k")
    right.set_title("Cumulative energy")
    right.legend(fontsize=8)
    return _save(plt, fig, path)
