"""What a run leaves besides the adapter and metrics.json: train_log.csv, plots, TensorBoard."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lorakit.atomic import write_file, write_text, writing

LOG_FIELDS = ["step", "epoch", "loss", "lr", "tokens_per_s", "elapsed_s", "val_metric"]


def write_log_csv(path: Path, log: list[dict]) -> None:
    """LOG_FIELDS, then the columns an objective adds (preference runs: reward accuracy,
    margin, rewards and log-probs of each step's pairs), in the order the rows hold them."""
    extra = [k for k in dict.fromkeys(k for row in log for k in row) if k not in LOG_FIELDS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS + extra, extrasaction="ignore")
    writer.writeheader()
    for row in log:
        writer.writerow(row)
    write_text(path, buf.getvalue())


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plot_training(out: Path, log: list[dict], metric_name: str) -> list[Path]:
    """loss + learning rate by step, and the validation metric by step when there is one."""
    plt = _figure()
    paths = []
    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in log], color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in log], color="tab:orange", alpha=0.7, label="learning rate")
    ax2.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    ax.set_title("Training loss and learning rate")
    _save(fig, out / "loss_lr.png")
    plt.close(fig)
    paths.append(out / "loss_lr.png")
    val = [(r["step"], r["val_metric"]) for r in log if r.get("val_metric") is not None]
    if val:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([s for s, _ in val], [v for _, v in val], marker="o")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric_name)
        ax.set_title(f"Validation {metric_name}")
        _save(fig, out / "validation.png")
        plt.close(fig)
        paths.append(out / "validation.png")
    return paths


def plot_confusion(path: Path, matrix: list[list[int]], labels: list[str]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(
                j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black"
            )
    ax.set_title("Confusion matrix (test)")
    _save(fig, path)
    plt.close(fig)


class Board:
    """TensorBoard scalars; a resumed run purges events past its checkpoint's step.

    A disk error while writing events is a WriteError like any other write's."""

    def __init__(self, directory: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.directory = directory
        with writing(directory):
            self.writer = SummaryWriter(str(directory), purge_step=purge_step)

    def log(self, step: int, values: dict) -> None:
        with writing(self.directory):
            for key, value in values.items():
                if isinstance(value, int | float):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        with writing(self.directory):
            self.writer.close()
