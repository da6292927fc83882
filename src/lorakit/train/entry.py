"""`lorakit train` end to end: build, fit, evaluate, write the run directory."""

from __future__ import annotations

from pathlib import Path

from lorakit.adapters import save_adapter
from lorakit.atomic import WriteError, write_json
from lorakit.config import TrainConfig
from lorakit.eval.measure import peak_memory_mb
from lorakit.eval.passes import finite
from lorakit.eval.splits import perplexity_metrics, split_metrics, validation_metric
from lorakit.train import distributed
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.fsdp import gathered
from lorakit.train.loop import Run, build, fit, parameter_counts
from lorakit.train.memory import memory_policy
from lorakit.train.outputs import plot_confusion, plot_training, write_log_csv


def _scores(run: Run, split: str) -> dict:
    return split_metrics(run.model, run.tokenizer, run.data, run.config.task, split)


def _pair_scores(run: Run, split: str) -> dict:
    """The held-out pair metrics of a preference run ({} for sft)."""
    return run.pairs.scores(run.model, split) if run.pairs is not None else {}


def _validation(run: Run) -> float | None:
    if run.pairs is not None:  # what preference tuning moves: held-out reward accuracy
        return _pair_scores(run, "validation").get("reward_accuracy")
    return validation_metric(run.model, run.tokenizer, run.data, run.config.task)


def train(config: TrainConfig, log=print, progress: bool = True, baseline: bool = False) -> dict:
    """Train per `config`; return metrics.json's content. Resumes with config.resume.

    baseline: also score the untrained model on the test split first ("test_before"):
    the base model, with a fresh head for classification (a new adapter changes nothing).

    Under torchrun every rank runs this; only rank 0 logs and writes. Evaluation runs on
    every rank, each over the whole split: the ranks hold identical models, so they get
    identical numbers (the metrics a single process gets), no rank sits at a barrier that
    a long evaluation could time out, and it works unchanged under FSDP, where a forward
    pass is itself a collective that every rank must join. The cost is duplicated
    evaluation compute, not wall time: the other ranks would otherwise wait.
    """
    try:
        with memory_policy(config):  # before the data and model are allocated
            return _train(config, log, progress, baseline)
    finally:
        distributed.teardown()


def _resumable(exc: WriteError, config: TrainConfig) -> WriteError:
    """A failed write, with how to continue: every complete checkpoint is still there."""
    done = list_checkpoints(Path(config.output) / "checkpoints")
    if not done or not (Path(config.output) / "config.json").is_file():
        return exc
    step = int(done[-1].name.removeprefix("step-"))
    fix = exc.fix.removesuffix(", then run the command again")
    return WriteError(
        exc.path,
        exc.code,
        f"{fix}, then add --resume to continue from step {step}, its last complete checkpoint",
    )


def _train(config: TrainConfig, log, progress: bool, baseline: bool) -> dict:
    log = distributed.main_only(log)
    run = build(config, log)
    try:
        return _fit_and_report(run, log, progress, baseline)
    except WriteError as exc:  # the run directory exists: say how to go on from it
        raise _resumable(exc, config) from exc


def _fit_and_report(run: Run, log, progress: bool, baseline: bool) -> dict:
    config = run.config
    before = finite(_scores(run, "test")) if baseline else None
    # the starting model on held-out pairs (fit loads a checkpoint only later, so a resumed
    # run scores its start too); for DPO the reference itself: rewards 0
    pairs_before = {s: _pair_scores(run, s) for s in ("validation", "test")}
    if run.pairs is not None:
        before = {**(before or {}), **finite(pairs_before["test"])}
    state = fit(run, _validation, log, progress)
    metrics = {
        "method": config.method,
        "objective": config.objective,
        "model": config.model,
        "task": config.task,
        "precision": run.precision.name,
        "precision_reason": run.precision.reason,
        "steps": state.step,
        "train_seconds": round(state.seconds, 3),
        "train_tokens": state.tokens,
        "train_samples": state.samples,
        "train_tokens_per_s": state.tokens / max(state.seconds, 1e-9),
        "train_samples_per_s": state.samples / max(state.seconds, 1e-9),
        "final_train_loss": state.log[-1]["loss"] if state.log else None,
        "peak_memory_mb": peak_memory_mb(run.device),
        **parameter_counts(run.model),
    }
    log("evaluating on the validation and test splits ...")
    metrics["validation"] = finite(
        _scores(run, "validation")
        if config.task == "classification"
        else {
            **perplexity_metrics(run.model, run.tokenizer, run.data, "validation"),
            **_pair_scores(run, "validation"),
        }
    )
    metrics["test"] = finite({**_scores(run, "test"), **_pair_scores(run, "test")})
    if before is not None:
        metrics["test_before"] = before
    if run.pairs is not None:
        metrics["validation_before"] = finite(pairs_before["validation"])
    if state.log:
        state.log[-1]["val_metric"] = metrics["validation"].get(_tracked(config))
    # Under FSDP every rank gathers the weights being saved (a collective); rank 0 writes.
    with gathered(run.model, trainable_only=config.method in ("lora", "dora")):
        if distributed.is_main():
            metrics["artifact_bytes"] = _save_artifacts(run)
            _write_reports(run, metrics)
    distributed.barrier()  # every rank returns once the run directory is complete
    return metrics


def _save_artifacts(run: Run) -> int:
    """The adapter (lora/dora) or the whole model (full/head); returns its size on disk."""
    cfg = run.config
    if cfg.method in ("lora", "dora"):
        extra = {"lorakit_train_config.json": cfg.model_dump(mode="json")}
        if run.data.labels:
            extra["labels.json"] = run.data.labels
        path = save_adapter(run.model, run.out / "adapter", overwrite=True, extra_files=extra)
    else:
        path = run.out / "model"
        run.model.save_pretrained(path)
        run.tokenizer.save_pretrained(path)
    return sum(
        f.stat().st_size for f in Path(path).iterdir() if f.is_file() and f.suffix == ".safetensors"
    )


def _write_reports(run: Run, metrics: dict) -> None:
    out, log = run.out, run.state.log
    write_log_csv(out / "train_log.csv", log)
    if log:
        plot_training(out, log, _tracked(run.config).replace("_", " "))
    if run.config.task == "classification" and "confusion_matrix" in metrics["test"]:
        plot_confusion(
            out / "confusion_matrix.png", metrics["test"]["confusion_matrix"], run.data.labels
        )
    write_json(out / "metrics.json", metrics)


def _tracked(config: TrainConfig) -> str:
    """The validation metric of train_log.csv's val_metric column."""
    if config.task == "classification":
        return "accuracy"
    return "reward_accuracy" if config.objective != "sft" else "perplexity"


def summary(metrics: dict, output: str) -> str:
    """The one line `lorakit train` prints at the end: speed and the test scores."""
    test = metrics["test"]
    names = ("accuracy", "macro_f1", "reward_accuracy", "reward_margin", "perplexity")
    names += ("exact_match", "rouge_l")
    scores = ", ".join(
        f"test {k} {test[k]:.4f}" for k in names if isinstance(test.get(k), int | float)
    )
    if test.get("examples") == 0:
        scores = "no test scores (the test split is empty)"
    return (
        f"done: {metrics['steps']} steps in {metrics['train_seconds']:.1f}s "
        f"({metrics['train_samples_per_s']:.1f} samples/s, "
        f"{metrics['train_tokens_per_s']:.0f} tokens/s); {scores} → {output}"
    )
