"""The training loop: one loop for LoRA, DoRA, full fine-tuning and head-only runs.

Deterministic given the seed: model init, data order (a function of seed and epoch) and
dropout RNG (saved in checkpoints), so a run killed at any step and resumed ends with
the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.config import TrainConfig
from lorakit.data import collate, collate_packed, length_grouped_batches, lengths_of, pack
from lorakit.lora import trainable_line, trainable_parameters
from lorakit.models.load import load_model, load_tokenizer, model_dir, resolve_model
from lorakit.train.checkpoint import TrainState, list_checkpoints, load_checkpoint, save_checkpoint
from lorakit.train.loss import loss_fn
from lorakit.train.optim import build_optimizer, warmup_cosine
from lorakit.train.outputs import Board, write_json, write_log_csv
from lorakit.train.prepare import Prepared, prepare
from lorakit.train.progress import Progress
from lorakit.train.setup import apply_method, check_output, create_output, resolve_device


@dataclass
class Run:
    """Everything a finished (or evaluated) run hands to the caller."""

    config: TrainConfig
    out: Path
    model: torch.nn.Module
    tokenizer: object
    data: Prepared
    state: TrainState
    device: torch.device


def build(config: TrainConfig, log=print) -> Run:
    """Output dir, tokenizer, data, model and method, seeded: the same config builds the same run."""
    check_output(config)  # nothing is written until the model and data are known to be good
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(model_dir(resolve_model(config.model)), config.task)
    data = prepare(config, tokenizer)
    log(
        f"data: {data.stats.summary()}; using train {len(data.train):,} / validation {len(data.validation):,}"
        f" / test {len(data.test):,}"
    )
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(
        config.model, config.task, label_names=data.labels, seed=config.seed
    )
    apply_method(model, config)
    model.to(device)
    out = create_output(config)
    write_json(out / "config.json", config.model_dump(mode="json"))
    return Run(config, out, model, tokenizer, data, TrainState(), device)


def _epoch_batches(run: Run, epoch: int) -> list[dict]:
    """The epoch's micro-batches as tensors (a pure function of seed and epoch)."""
    cfg, pad_id = run.config, run.tokenizer.pad_token_id
    if cfg.packing and cfg.task == "causal-lm":
        rows = pack(run.data.train, cfg.max_length, pad_id)
        order = torch.randperm(
            len(rows), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        ).tolist()
        dtype = next(run.model.parameters()).dtype
        batches = []
        for s in range(0, len(order), cfg.batch_size):
            chunk = [rows[i] for i in order[s : s + cfg.batch_size]]
            batch = collate_packed(chunk, dtype)
            # real tokens, not the padding at the end of each row
            batch["n_tokens"] = torch.tensor(sum(sum(r["seq_lens"]) for r in chunk))
            batches.append(batch)
        return batches
    groups = length_grouped_batches(
        lengths_of(run.data.train), cfg.batch_size, seed=cfg.seed + epoch
    )
    return [collate([run.data.train[i] for i in idx], pad_id) for idx in groups]


def _count_tokens(batch: dict) -> int:
    """Real (non-padding) input tokens of a micro-batch."""
    if "n_tokens" in batch:
        return int(batch["n_tokens"])
    return int(batch["attention_mask"].sum())


def _autocast(device: torch.device):
    # bf16 autocast on GPU only: on this class of CPU bf16 matmuls are far slower than fp32.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(run: Run, evaluate_fn=None, log=print, progress: bool = True) -> TrainState:
    """Train `run` to its step budget, checkpointing as it goes; resumes if asked."""
    cfg, model, device = run.config, run.model, run.device
    compute_loss = loss_fn(cfg.task)
    optimizer = build_optimizer(model, cfg.resolved_lr(), cfg.weight_decay, cfg.lora_plus_ratio)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    batches = _epoch_batches(run, 0)
    steps_per_epoch = math.ceil(len(batches) / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    schedule = warmup_cosine(total, int(cfg.warmup_ratio * total))
    ckpt_dir = run.out / "checkpoints"
    state = TrainState()
    if cfg.resume and list_checkpoints(ckpt_dir):
        state = load_checkpoint(list_checkpoints(ckpt_dir)[-1], model, optimizer)
        log(f"resumed from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    run.state = state
    log(trainable_line(model))
    board = Board(run.out / "tensorboard", purge_step=state.step + 1 if state.step else None)
    bar = Progress(total, state.step, enabled=progress)
    t_start = time.perf_counter() - state.seconds
    model.train()
    try:
        while state.step < total:
            if state.epoch > 0 or batches is None:
                batches = _epoch_batches(run, state.epoch)
            b = state.batch_in_epoch
            while b < len(batches) and state.step < total:
                group = batches[b : min(b + cfg.grad_accum, len(batches))]
                loss_value = _step(
                    model,
                    optimizer,
                    group,
                    compute_loss,
                    device,
                    cfg,
                    base_lrs,
                    schedule(state.step),
                )
                b += len(group)
                state.step += 1
                state.batch_in_epoch = b
                state.samples += sum(len(x["input_ids"]) for x in group)
                state.tokens += sum(_count_tokens(x) for x in group)
                state.seconds = time.perf_counter() - t_start
                row = {
                    "step": state.step,
                    "epoch": round(state.epoch + b / len(batches), 4),
                    "loss": loss_value,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": state.tokens / max(state.seconds, 1e-9),
                    "elapsed_s": round(state.seconds, 3),
                    "val_metric": None,
                }
                if (
                    evaluate_fn
                    and cfg.eval_every
                    and state.step % cfg.eval_every == 0
                    and state.step < total
                ):
                    row["val_metric"] = evaluate_fn(run)
                    model.train()
                state.log.append(row)
                board.log(
                    state.step,
                    {
                        "train/loss": loss_value,
                        "train/lr": row["lr"],
                        "val/metric": row["val_metric"],
                    },
                )
                bar.update(state.step, loss_value, row["tokens_per_s"])
                if state.step % cfg.save_every == 0 or state.step == total:
                    save_checkpoint(ckpt_dir, model, optimizer, state, cfg.keep_last)
                    write_log_csv(run.out / "train_log.csv", state.log)
            if b >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                batches = None
    finally:
        bar.close()
        board.close()
    model.eval()
    return state


def _step(model, optimizer, group, compute_loss, device, cfg, base_lrs, factor) -> float:
    for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        g["lr"] = lr * factor
    total = 0.0
    for batch in group:
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device):
            loss = compute_loss(model, batch) / len(group)
        loss.backward()
        total += loss.item()
    if cfg.max_grad_norm:
        params = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def parameter_counts(model) -> dict:
    trainable, total = trainable_parameters(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
    }
