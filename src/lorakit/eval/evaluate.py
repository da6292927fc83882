"""`lorakit eval`: a model, optionally with an adapter, on a data split → metrics."""

from __future__ import annotations

from lorakit.config import TrainConfig
from lorakit.data.prepare import prepare
from lorakit.errors import ConfigError, DataError
from lorakit.eval.passes import finite
from lorakit.eval.splits import split_metrics
from lorakit.infer.load import load_for_inference
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
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"unknown split {split!r} — use train, validation or test")

    loaded, tokenizer, task, labels = load_for_inference(model, adapter, task)
    # The data half of a TrainConfig, validated as `lorakit train` validates it; the
    # training split is cut to one example unless it is the split scored.
    data_config = TrainConfig(
        model=model,
        task=task,
        data=data,
        text_column=text_column,
        label_column=label_column,
        max_eval_samples=max_eval_samples,
        max_train_samples=max_eval_samples if split == "train" else 1,
        max_length=max_length,
    )
    prepared = prepare(data_config, tokenizer)
    if labels and prepared.labels and list(labels) != list(prepared.labels):
        raise DataError(
            f"the data's classes {prepared.labels} differ from the adapter's {labels} — "
            "evaluate on data with the same label names"
        )
    result = {
        "model": model,
        "adapter": adapter,
        "split": split,
        "metrics": finite(split_metrics(loaded, tokenizer, prepared, task, split)),
    }
    if compare_base and adapter is not None:
        with disable_adapters(loaded):
            result["base_metrics"] = finite(split_metrics(loaded, tokenizer, prepared, task, split))
    return result
