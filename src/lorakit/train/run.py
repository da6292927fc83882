"""`lorakit train` end to end: build, fit, evaluate, write the run directory."""

from __future__ import annotations

from pathlib import Path

from lorakit.adapters import save_adapter
from lorakit.atomic import WriteError
from lorakit.config import TrainConfig
from lorakit.eval.measure import peak_memory_mb
from lorakit.eval.run import (
    chat_prompts_and_references,
    evaluate_classification,
    evaluate_generation,
    evaluate_perplexity,
    finite,
)
from lorakit.train import distributed
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.fsdp import gathered
from lorakit.train.loop import Run, build, fit, parameter_counts
from lorakit.train.outputs import plot_confusion, plot_training, write_json, write_log_csv
from lorakit.train.setup import memory_policy

GENERATION_EXAMPLES = 200  # generation metrics are slow; perplexity uses the whole split


def validation_metric(run: Run) -> float:
    """The number tracked during training: validation accuracy, or perplexity for causal LM."""
    pad = run.tokenizer.pad_token_id
    if run.config.task == "classification":
        return evaluate_classification(
            run.model, run.data.validation, run.data.labels, pad, latency_samples=0
        )["accuracy"]
    return evaluate_perplexity(run.model, run.data.validation, pad)["perplexity"]


def test_metrics(run: Run, split: str = "test") -> dict:
    """Full metrics on a split: classification report, or perplexity + generation quality."""
    ds = getattr(run.data, split)
    pad = run.tokenizer.pad_token_id
    if run.config.task == "classification":
        return evaluate_classification(run.model, ds, run.data.labels, pad)
    out = evaluate_perplexity(run.model, ds, pad)
    raw = run.data.raw[split]
    n = min(len(raw), GENERATION_EXAMPLES)
    if "messages" in raw.column_names:
        prompts, refs = chat_prompts_and_references(run.tokenizer, raw.select(range(n))["messages"])
    elif {"prompt", "response"} <= set(raw.column_names):
        sub = raw.select(range(n))
        if run.tokenizer.chat_template:
            prompts, refs = chat_prompts_and_references(
                run.tokenizer,
                [
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                    for p, r in zip(sub["prompt"], sub["response"], strict=True)
                ],
            )
        else:
            prompts, refs = list(sub["prompt"]), list(sub["response"])
    else:
        return out
    longest = max(len(run.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs)
    out.update(
        evaluate_generation(
            run.model, run.tokenizer, prompts, refs, max_new_tokens=min(longest + 4, 128)
        )
    )
    return out


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
    before = finite(test_metrics(run, "test")) if baseline else None
    state = fit(run, validation_metric, log, progress)
    metrics = {
        "method": config.method,
        "model": config.model,
        "task": config.task,
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
        test_metrics(run, "validation")
        if config.task == "classification"
        else evaluate_perplexity(run.model, run.data.validation, run.tokenizer.pad_token_id)
    )
    metrics["test"] = finite(test_metrics(run, "test"))
    if before is not None:
        metrics["test_before"] = before
    if state.log:
        state.log[-1]["val_metric"] = (
            metrics["validation"].get("accuracy")
            if config.task == "classification"
            else metrics["validation"].get("perplexity")
        )
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
    name = "accuracy" if run.config.task == "classification" else "perplexity"
    if log:
        plot_training(out, log, name)
    if run.config.task == "classification":
        plot_confusion(
            out / "confusion_matrix.png", metrics["test"]["confusion_matrix"], run.data.labels
        )
    write_json(out / "metrics.json", metrics)
