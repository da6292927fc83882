"""`lorakit eval`: a model, optionally with an adapter, on a data split → metrics."""

from __future__ import annotations

from lorakit.config import TrainConfig
from lorakit.eval.infer import load_for_inference
from lorakit.eval.run import finite
from lorakit.lora import disable_adapters


def evaluate(
    model: str,
    data: str = "tweets",
    adapter: str | None = None,
    task: str | None = None,
    split: str = "test",
    compare_base: bool = False,
    max_eval_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    max_length: int = 128,
) -> dict:
    """Metrics of the model (+ adapter) on `split`; with compare_base, of the base model too."""
    from lorakit.errors import ConfigError
    from lorakit.train.loop import Run
    from lorakit.train.prepare import prepare
    from lorakit.train.run import test_metrics

    if split not in ("train", "validation", "test"):
        raise ConfigError(f"unknown split {split!r} — use train, validation or test")

    loaded, tokenizer, task, labels = load_for_inference(model, adapter, task)
    config = TrainConfig(
        model=model,
        task=task,
        data=data,
        text_column=text_column,
        label_column=label_column,
        max_eval_samples=max_eval_samples,
        max_train_samples=max_eval_samples if split == "train" else 1,
        max_length=max_length,
    )
    prepared = prepare(config, tokenizer)
    if labels and prepared.labels and list(labels) != list(prepared.labels):
        from lorakit.errors import DataError

        raise DataError(
            f"the data's classes {prepared.labels} differ from the adapter's {labels} — "
            "evaluate on data with the same label names"
        )
    run = Run(config, None, loaded, tokenizer, prepared, None, next(loaded.parameters()).device)
    result = {
        "model": model,
        "adapter": adapter,
        "split": split,
        "metrics": finite(test_metrics(run, split)),
    }
    if compare_base and adapter is not None:
        with disable_adapters(loaded):
            result["base_metrics"] = finite(test_metrics(run, split))
    return result
