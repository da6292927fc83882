"""A model loaded for use: the base, its adapter active, the task and label names."""

from __future__ import annotations

from pathlib import Path

import torch

from lorakit.adapters import load_adapter, read_adapter, read_config, read_labels
from lorakit.errors import ConfigError
from lorakit.models.load import load_model
from lorakit.precision import Choice, resolve_precision

_TASK_OF = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal-lm"}


def adapter_task(
    adapter: str | Path, *, confine: bool = False
) -> tuple[str | None, list[str] | None]:
    """(task, label names) recorded with an adapter directory. A malformed adapter_config.json
    or labels.json raises AdapterFormatError; `confine`: both must be regular files inside the
    directory (no symlinks out of it)."""
    raw = read_config(Path(adapter), confine=confine)
    labels = read_labels(Path(adapter), confine=confine)
    return _TASK_OF.get(raw.get("task_type")), labels


def load_for_inference(
    model: str,
    adapter: str | Path | None = None,
    task: str | None = None,
    precision: str | Choice = "fp32",
    quantize: str = "none",
    fast_decode: bool = True,
):
    """(model, tokenizer, task, label names) with the adapter loaded and active, the base
    stored in `precision` (a --precision name, resolved for the CPU, or a Choice) and, with
    `quantize` int8 / nf4, its frozen Linear and Embedding weights quantized (after the
    adapter is in place, as training does: the adapter and its saved modules stay as they
    are). `fast_decode`: int8 layers may run torch's int8 kernel, bf16-rounded (models/
    int8_kernel.py); off, they compute as training did (`lorakit eval` reproduces a run)."""
    labels = None
    if adapter is not None:
        adapter_kind, labels = adapter_task(adapter)
        if task and adapter_kind and task != adapter_kind:
            raise ConfigError(
                f"--task {task} but the adapter was trained for {adapter_kind} — drop --task"
            )
        task = task or adapter_kind
    task = task or "causal-lm"
    num_labels = None
    if adapter is not None and task == "classification" and labels is None:
        num_labels = saved_head_size(adapter)  # peft writes no labels.json; its head says
    choice = inference_precision(precision)
    loaded, tokenizer = load_model(
        model, task, num_labels=num_labels, label_names=labels, dtype=choice.dtype
    )
    if adapter is not None:
        load_adapter(loaded, adapter)
    if quantize != "none":
        from lorakit.models.quantize import quantize as quantize_base

        quantize_base(loaded.requires_grad_(False), quantize, inference=fast_decode)
    loaded.eval()
    return loaded, tokenizer, task, labels or _config_labels(loaded)


def inference_precision(
    precision: str | Choice, device: str = "cpu", *, single_row: bool = False
) -> Choice:
    """A --precision name resolved for inference on `device` (no autocast: every weight is
    frozen, so the whole base is stored in the chosen dtype). single_row: one sequence
    decoded at a time (generate, chat), where auto also weighs the 1-row matmul."""
    if isinstance(precision, Choice):
        return precision
    return resolve_precision(precision, torch.device(device), single_row=single_row)


def saved_head_size(adapter: str | Path) -> int | None:
    """Outputs of the classification head saved with an adapter (modules_to_save): the
    smallest output dimension among its matrices — the label count, next to which any
    hidden projection (RoBERTa's classifier.dense) is far wider. None when none is saved."""
    saved = read_adapter(adapter).saved
    rows = [t.shape[0] for params in saved.values() for n, t in params.items() if t.ndim == 2]
    return min(rows) if rows else None


def _config_labels(model) -> list[str] | None:
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    return [id2label[i] for i in sorted(id2label)] if id2label else None
