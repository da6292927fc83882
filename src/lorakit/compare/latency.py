"""Inference latency of a finished run: the adapter unmerged, then merged into the base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.config import TrainConfig
from lorakit.data import collate
from lorakit.eval.measure import Timer, percentile

WARMUP = 2  # first forwards pay for allocator growth and kernel selection


@dataclass
class Probe:
    """The timed inputs: a few test examples of the sweep's data, as batches of one."""

    batches: list[dict]
    labels: list[str] | None


def probe_inputs(config: TrainConfig, n: int) -> Probe:
    """Tokenize the first `n` test examples (reads and checks the data: nothing written)."""
    from lorakit.data.prepare import prepare
    from lorakit.models.load import load_tokenizer, model_dir, resolve_model

    tokenizer = load_tokenizer(model_dir(resolve_model(config.model)), config.task)
    # Only the test split is needed: one training example keeps tokenization short.
    small = config.model_copy(update={"max_train_samples": 1, "max_eval_samples": n})
    data = prepare(small, tokenizer)
    pad = tokenizer.pad_token_id
    batches = [collate([data.test[i]], pad) for i in range(min(n, len(data.test)))]
    inputs = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches]
    return Probe(inputs, data.labels)


@torch.no_grad()
def forward_ms(model: torch.nn.Module, batches: list[dict]) -> float:
    """Median milliseconds of one forward pass of one example."""
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    model.eval()
    for b in batches[:WARMUP]:
        model(**b)
    times = []
    for b in batches:
        with Timer(device) as t:
            model(**b)
        times.append(t.seconds * 1000)
    return percentile(times, 50)


def run_latency(run_dir: Path, config: TrainConfig, probe: Probe, device: torch.device) -> dict:
    """{latency_unmerged_ms, latency_merged_ms} of the run saved in `run_dir`.

    LoRA / DoRA: the base model with the saved adapter loaded, timed as is, then after
    lorakit.merge. Full / head runs save a plain model: its one latency fills both columns.
    """
    from lorakit.adapters import load_adapter
    from lorakit.infer.load import inference_precision
    from lorakit.lora import merge
    from lorakit.models.load import load_model

    dtype = inference_precision(config.precision, device.type).dtype  # as the run computed
    if config.method in ("lora", "dora"):
        model, _ = load_model(config.model, config.task, label_names=probe.labels, dtype=dtype)
        load_adapter(model, run_dir / "adapter")
        model.to(device)
        unmerged = forward_ms(model, probe.batches)
        merge(model)
        merged = forward_ms(model, probe.batches)
    else:
        model, _ = load_model(str(run_dir / "model"), config.task, dtype=dtype)
        model.to(device)
        unmerged = merged = forward_ms(model, probe.batches)
    return {"latency_unmerged_ms": unmerged, "latency_merged_ms": merged}
