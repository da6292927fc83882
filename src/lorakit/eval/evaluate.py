"""`lorakit eval`: a model, optionally with an adapter, on a data split → metrics (and, on
preference data, the pair metrics training reports: reward accuracy, margin, rewards,
log-probs)."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.adapters import load_adapter
from lorakit.config import DATA_COLUMNS, TrainConfig
from lorakit.data.prepare import prepare
from lorakit.errors import ConfigError, DataError
from lorakit.eval.passes import finite
from lorakit.eval.preference import reference_logps, score_pairs
from lorakit.eval.preference_loss import Objective
from lorakit.eval.splits import split_metrics
from lorakit.infer.load import inference_precision, load_for_inference
from lorakit.lora import active_adapters, disable_adapters, set_adapter

REFERENCE = "reference"  # the name --reference-adapter is loaded under


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
    objective: str | None = None,
    beta: float | None = None,
    reference_adapter: str | None = None,
    format: str = "auto",
    precision: str = "auto",
    quantize: str = "none",
    **columns: str | None,
) -> dict:
    """Metrics of the model (+ adapter) on `split`; with compare_base, of the base model too.

    The data is read as `lorakit train` reads it: `format` and the column renames
    (`prompt_column`, `response_column`, `messages_column`, `chosen_column`,
    `rejected_column`, `instruction_column`, `input_column`, `output_column`,
    `system_column`: TrainConfig's fields). Preference data also gets the pair metrics,
    scored as `objective` with `beta` (default: the adapter's training values); DPO's
    rewards are measured against `reference_adapter`, or the base model (the adapter
    switched off). An empty split (a data file too small to leave rows for it) is a
    DataError."""
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"unknown split {split!r} — use train, validation or test")
    unknown = sorted(set(columns) - {f"{role}_column" for role in DATA_COLUMNS})
    if unknown:  # only the column renames travel through **columns
        raise TypeError(f"evaluate() got unexpected keyword arguments {unknown}")

    choice = inference_precision(precision)
    loaded, tokenizer, task, labels = load_for_inference(
        model, adapter, task, choice, quantize, fast_decode=False
    )
    # The data half of a TrainConfig, validated as `lorakit train` validates it; the
    # training split is cut to one example unless it is the split scored.
    data_config = TrainConfig(
        model=model,
        task=task,
        data=data,
        format=format,
        text_column=text_column,
        label_column=label_column,
        **columns,
        max_eval_samples=max_eval_samples,
        max_train_samples=max_eval_samples if split == "train" else 1,
        max_length=max_length,
    )
    prepared = prepare(data_config, tokenizer, pairs_if_present=True)
    if len(getattr(prepared, split)) == 0:
        raise DataError(
            f"the {split} split of {data} is empty ({prepared.stats.summary()}): too few rows "
            f"for a {split} split — evaluate another split (--split train), give more rows, "
            f"or a directory with train and {split} files"
        )
    if labels and prepared.labels and list(labels) != list(prepared.labels):
        raise DataError(
            f"the data's classes {prepared.labels} differ from the adapter's {labels} — "
            "evaluate on data with the same label names"
        )
    pairs = prepared.pairs[split] if prepared.pairs else None
    score = None
    if pairs is not None:
        score = _pair_scorer(loaded, tokenizer, pairs, adapter, objective, beta, reference_adapter)
    else:
        given = [f for f, v in (("--objective", objective), ("--beta", beta)) if v is not None]
        given += ["--reference-adapter"] if reference_adapter is not None else []
        if given:
            raise ConfigError(
                f"{' / '.join(given)} score preference pairs, and the data holds none (it "
                f"needs chosen and rejected columns) — drop {' / '.join(given)}"
            )

    def metrics() -> dict:
        out = split_metrics(loaded, tokenizer, prepared, task, split)
        return finite({**out, **(score() if score else {})})

    result = {"model": model, "adapter": adapter, "split": split, "precision": choice.name}
    result["quantize"] = quantize
    result["metrics"] = metrics()
    if compare_base and adapter is not None:
        with disable_adapters(loaded):
            result["base_metrics"] = metrics()
    return result


def _pair_scorer(model, tokenizer, pairs, adapter, objective, beta, reference_adapter):
    """A function scoring `pairs` with the model as it is when called (DPO: against the
    reference, whose log-probs are computed once, here)."""
    trained = _trained_with(adapter)
    name = objective or (trained.get("objective") if trained.get("objective") != "sft" else None)
    name = name or "dpo"
    if beta is None:
        beta = trained.get("orpo_lambda" if name == "orpo" else "beta", 0.1)
    pad = tokenizer.pad_token_id
    ref = None
    if name == "dpo":
        if reference_adapter is not None:
            active = active_adapters(model)
            load_adapter(model, reference_adapter, REFERENCE)  # frozen
            set_adapter(model, active)  # the model scored stays the model given
        ref = reference_logps(model, pairs, pad, REFERENCE if reference_adapter else None)
    elif reference_adapter is not None:
        raise ConfigError(
            "--reference-adapter is DPO's: ORPO's rewards need no reference — drop it, or "
            "score with --objective dpo"
        )
    return lambda: score_pairs(model, pairs, pad, Objective(name, beta), ref)


def _trained_with(adapter: str | None) -> dict:
    """The objective fields an adapter was trained with (lorakit_train_config.json), or {}."""
    path = Path(adapter) / "lorakit_train_config.json" if adapter else None
    try:
        saved = json.loads(path.read_text()) if path and path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v > 0

    valid = {"objective": lambda v: v in ("sft", "dpo", "orpo"), "beta": number}
    valid["orpo_lambda"] = number
    return {k: saved[k] for k, ok in valid.items() if k in saved and ok(saved[k])}
