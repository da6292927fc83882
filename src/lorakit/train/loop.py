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
from lorakit.data.prepare import Prepared, prepare
from lorakit.device import is_sharded, resolve_device
from lorakit.errors import ConfigError
from lorakit.eval.loss import IGNORE, loss_fn
from lorakit.eval.preference_loss import METRICS, pair_metrics
from lorakit.eval.splits import empty_split_notes
from lorakit.lora import trainable_line, trainable_parameters
from lorakit.models.attention import uses_fp32_attention
from lorakit.models.load import load_model, load_tokenizer, model_dir, resolve_model
from lorakit.precision import Choice, resolve_precision
from lorakit.train import distributed
from lorakit.train.checkpoint import (
    TrainState,
    checkpoint_precision,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    trainable_state,
)
from lorakit.train.fingerprint import run_fingerprint
from lorakit.train.fsdp import shard
from lorakit.train.method import apply_method
from lorakit.train.optim import build_optimizer, warmup_cosine
from lorakit.train.output_dir import check_output, create_output
from lorakit.train.outputs import Board, write_log_csv
from lorakit.train.preference import PairTraining, check_objective
from lorakit.train.progress import Progress


@dataclass
class Run:
    """Everything a finished run hands to the caller."""

    config: TrainConfig
    out: Path
    model: torch.nn.Module
    tokenizer: object
    data: Prepared
    state: TrainState
    device: torch.device
    pairs: PairTraining | None = None  # --objective dpo / orpo
    precision: Choice = Choice("fp32", "default")


def build(config: TrainConfig, log=print) -> Run:
    """Output dir, tokenizer, data, model and method, seeded: the same config builds the same run."""
    check_objective(config)
    check_output(config)  # nothing is written until the model and data are known to be good
    # what the run trains on, taken before reading it (rank 0 records it in the run)
    prints = run_fingerprint(config) if not config.resume and distributed.is_main() else None
    device = distributed.setup(resolve_device(config.device))
    log = distributed.main_only(log)
    precision = training_precision(config, device)
    log(precision.line())
    tokenizer = load_tokenizer(model_dir(resolve_model(config.model)), config.task)
    data = prepare(config, tokenizer)
    log(
        f"data: {data.stats.summary()}; using train {len(data.train):,} / validation {len(data.validation):,}"
        f" / test {len(data.test):,}"
    )
    for note in empty_split_notes(data):
        log(note)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(
        config.model, config.task, label_names=data.labels, seed=config.seed, dtype=precision.dtype
    )
    if device.type == "cpu" and uses_fp32_attention(model):
        log("attention: fp32 inside bf16 (torch's bf16 SDPA backward is slower on a CPU)")
    apply_method(model, config)
    model.to(device)
    if distributed.active() and config.distributed == "fsdp":
        shard(model)
    # Only rank 0 touches the disk. The first barrier keeps it from creating (or, with
    # --overwrite, deleting) the directory while another rank is still in check_output; the
    # second keeps the others from reading the directory before it is ready.
    distributed.barrier()
    if distributed.is_main():
        create_output(config, prints)
    distributed.barrier()
    pairs = None
    if config.objective != "sft":
        pairs = PairTraining(config, data.pairs, tokenizer.pad_token_id)
    state = TrainState(precision=precision.name)
    return Run(config, Path(config.output), model, tokenizer, data, state, device, pairs, precision)


def training_precision(config: TrainConfig, device: torch.device) -> Choice:
    """What --precision means for this run (printed, in metrics.json and checkpoints)."""
    train_all = config.method == "full"
    # auto's probe is timed, and a busy machine (or another thread count) can read it the
    # other way: a resumed run keeps computing in what it started in, so it stays exact
    resumed = _resumed_precision(config) if config.precision == "auto" else None
    if resumed is not None:
        choice = resolve_precision(resumed, device, train_all=train_all)
        choice = Choice(
            choice.name, f"the run being resumed computed in {resumed}", choice.autocast
        )
    else:
        choice = resolve_precision(config.precision, device, train_all=train_all)
    if distributed.active():  # auto's timed probe could differ by rank: rank 0's rules
        choice = distributed.all_gather_object(choice)[0]
    if choice.name == "fp16":
        raise ConfigError(
            "--precision fp16 is for inference (eval, generate, chat, classify, serve): fp16 "
            "training needs loss scaling, which lorakit does not do — train with bf16 or fp32"
        )
    return choice


def _resumed_precision(config: TrainConfig) -> str | None:
    """The precision of the checkpoint --resume will continue from, if there is one."""
    if not config.resume:
        return None
    found = list_checkpoints(Path(config.output) / "checkpoints")
    return checkpoint_precision(found[-1]) if found else None


def _epoch_batches(run: Run, epoch: int) -> list[dict]:
    """This rank's share of the epoch's micro-batches (a pure function of seed and epoch).

    batch_size is the global micro-batch: every rank cuts the same micro-batches and takes
    examples rank, rank + world, ... of each (strided, so the length-sorted batches give
    every rank similar lengths). One process takes them all, as it always did.
    """
    cfg, pad_id = run.config, run.tokenizer.pad_token_id
    rank, world = distributed.rank(), distributed.world()
    if run.pairs is not None:  # batch_size pairs: 2 x batch_size sequences
        groups, make = run.pairs.groups(epoch), run.pairs.make
    elif cfg.packing and cfg.task == "causal-lm":
        rows = pack(run.data.train, cfg.max_length, pad_id)
        order = torch.randperm(
            len(rows), generator=torch.Generator().manual_seed(cfg.seed + epoch)
        ).tolist()
        dtype = next(run.model.parameters()).dtype
        groups = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]

        def make(idx: list[int]) -> dict:
            chunk = [rows[i] for i in idx]
            batch = collate_packed(chunk, dtype)
            # real tokens, not the padding at the end of each row
            batch["n_tokens"] = torch.tensor(sum(sum(r["seq_lens"]) for r in chunk))
            return batch

    else:
        groups = length_grouped_batches(
            lengths_of(run.data.train), cfg.batch_size, seed=cfg.seed + epoch
        )

        def make(idx: list[int]) -> dict:
            return collate([run.data.train[i] for i in idx], pad_id)

    batches = [_share(idx, make, rank, world) for idx in groups]
    if run.pairs is not None:  # every process's pairs (PairTraining's reference cache)
        for idx, batch in zip(groups, batches, strict=True):
            batch["group_index"] = torch.tensor(idx)
    return batches


def _share(idx: list[int], make, rank: int, world: int) -> dict:
    """This rank's examples of one global micro-batch, as tensors.

    A rank left without examples (a last batch smaller than the world) runs a stand-in
    example whose loss counts zero: every rank still takes part in each collective (FSDP's
    forward is one), and the gradients it adds are exactly zero.
    """
    mine = idx[rank::world]
    if mine:
        return make(mine)
    batch = make(idx[:1])
    batch["stand_in"] = torch.tensor(1)
    return batch


def _count_tokens(batch: dict) -> int:
    """Real (non-padding) input tokens of a micro-batch."""
    if "stand_in" in batch:
        return 0
    if "n_tokens" in batch:
        return int(batch["n_tokens"])
    return int(batch["attention_mask"].sum())


def _autocast(precision: Choice, device: torch.device):
    # Only full fine-tuning runs under autocast (fp32 weights, half-precision matmuls); the
    # other methods store the frozen base in half precision and need none.
    if precision.autocast:
        return torch.autocast(device.type, dtype=precision.compute_dtype)
    return contextlib.nullcontext()


def fit(run: Run, evaluate_fn=None, log=print, progress: bool = True) -> TrainState:
    """Train `run` to its step budget, checkpointing as it goes; resumes if asked."""
    cfg, model = run.config, run.model
    objective = run.pairs if run.pairs is not None else _Supervised(cfg.task)
    optimizer = build_optimizer(model, cfg.resolved_lr(), cfg.weight_decay, cfg.lora_plus_ratio)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    batches = _epoch_batches(run, 0)
    steps_per_epoch = math.ceil(len(batches) / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    schedule = warmup_cosine(total, int(cfg.warmup_ratio * total))
    ckpt_dir = run.out / "checkpoints"
    main, rank = distributed.is_main(), distributed.rank()
    log, progress = distributed.main_only(log), progress and main
    state = TrainState(precision=run.precision.name)
    # Every rank reads the same checkpoint (rank 0 wrote it; none is written before every
    # rank has passed this point, as rank 0 cannot finish a step alone).
    if cfg.resume and list_checkpoints(ckpt_dir):
        state = load_checkpoint(list_checkpoints(ckpt_dir)[-1], model, optimizer, rank, run.pairs)
        if state.precision != run.precision.name:
            raise ConfigError(
                f"--resume: the run trained in {state.precision} until step {state.step} but "
                f"resolves to {run.precision.name} here — add --precision {state.precision} "
                "(a resumed run is exact only within one precision)"
            )
        log(f"resumed from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    elif rank > 0:
        # Dropout masks must differ between ranks: rank 0 keeps the single-process stream,
        # the others get their own, derived from the seed (and saved in checkpoints).
        torch.manual_seed(distributed.rank_seed(cfg.seed, rank))
    if not is_sharded(model):
        # Replicas start identical, whatever the hardware did with init (e.g. PiSSA's SVD).
        distributed.broadcast_from_main([p for p in model.parameters() if p.requires_grad])
    run.state = state
    log(trainable_line(model))
    board = (
        Board(run.out / "tensorboard", purge_step=state.step + 1 if state.step else None)
        if main
        else None
    )
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
                loss_value, samples, tokens, pair_stats = _step(
                    run, optimizer, group, objective, base_lrs, schedule(state.step)
                )
                b += len(group)
                state.step += 1
                state.batch_in_epoch = b
                state.samples += samples
                state.tokens += tokens
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
                if pair_stats is not None:  # this step's pairs: the six statistics
                    means = pair_metrics(pair_stats)
                    row.update({k: means[k] for k in METRICS})
                if (
                    evaluate_fn
                    and cfg.eval_every
                    and state.step % cfg.eval_every == 0
                    and state.step < total
                ):
                    row["val_metric"] = evaluate_fn(run)
                    model.train()
                state.log.append(row)
                if board:
                    board.log(
                        state.step,
                        {
                            "train/loss": loss_value,
                            "train/lr": row["lr"],
                            "val/metric": row["val_metric"],
                            **{f"train/{k}": row.get(k) for k in METRICS},
                        },
                    )
                bar.update(state.step, loss_value, row["tokens_per_s"])
                if state.step % cfg.save_every == 0 or state.step == total:
                    _checkpoint(run, optimizer, state)
            if b >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                batches = None
    except BaseException:
        bar.close()
        if board:  # the error in flight is the one to report
            with contextlib.suppress(Exception):
                board.close()
        raise
    bar.close()
    if board:
        board.close()
    model.eval()
    return state


def _checkpoint(run: Run, optimizer, state: TrainState) -> None:
    """Rank 0 writes the checkpoint; every rank takes part in gathering what goes in it
    (every rank's RNG state; under FSDP, the shards)."""
    tensors, optimizer_state = trainable_state(run.model, optimizer)
    rngs = distributed.all_gather_object(torch.get_rng_state()) if distributed.active() else None
    if distributed.is_main():
        ckpt_dir = run.out / "checkpoints"
        extra = run.pairs.state_dict() if run.pairs is not None else None
        save_checkpoint(
            ckpt_dir, tensors, optimizer_state, state, run.config.keep_last, rngs, extra
        )
        write_log_csv(run.out / "train_log.csv", state.log)


def _step(run: Run, optimizer, group, objective, base_lrs, factor):
    """One optimizer step over `group` (this rank's share of grad_accum micro-batches).

    Returns the global batch's (loss, samples, tokens, pair statistics or None). A
    micro-batch's loss is a mean (over its labelled tokens, its examples, or its pairs);
    under torchrun each rank divides its *sum* by the global count and the gradients are
    summed over ranks, which is exactly the gradient one process gets from the whole
    micro-batch, however unevenly it is split.
    """
    model, device, cfg = run.model, run.device, run.config
    for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        g["lr"] = lr * factor
    sharded = distributed.active()
    counts = [[*objective.terms(b), objective.samples(b), _count_tokens(b)] for b in group]
    if sharded:  # global denominators and counters, in one collective
        summed = torch.tensor(counts, dtype=torch.long, device=device)
        distributed.all_reduce_sum([summed])
        counts = summed.tolist()
    total, stats = 0.0, objective.zero_stats()
    for batch, row in zip(group, counts, strict=True):
        stand_in = "stand_in" in batch
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(run.precision, device):
            loss, sums = objective.loss(model, batch, row[:-2], len(group))
            if sharded and stand_in:
                loss, sums = loss * 0.0, None
        loss.backward()
        total += loss.item()
        if sums is not None:
            stats = {k: stats[k] + v for k, v in sums.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    if sharded:
        keys = sorted(stats) if stats is not None else []
        summed = torch.tensor([total, *(stats[k] for k in keys)], device=device)
        if is_sharded(model):  # FSDP has reduce-scattered the gradients in backward
            distributed.all_reduce_sum([summed])
        else:
            distributed.sum_gradients(params, summed)
        total, *values = summed.tolist()
        stats = dict(zip(keys, values, strict=True)) if stats is not None else None
    if cfg.max_grad_norm:  # after the sum: every rank clips by the same global norm
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, sum(c[-2] for c in counts), sum(c[-1] for c in counts), stats


class _Supervised:
    """The sft objective, in the interface PairTraining also offers the loop."""

    def __init__(self, task: str):
        self.task, self.compute = task, loss_fn(task)

    def terms(self, batch: dict) -> list[int]:
        return [_loss_terms(batch, self.task)]

    @staticmethod
    def samples(batch: dict) -> int:
        return _count_samples(batch)

    @staticmethod
    def zero_stats() -> None:
        return None  # sft logs no statistics beyond the loss

    def loss(self, model, batch: dict, totals: list[int], parts: int):
        if distributed.active():
            return self.compute(model, batch, reduction="sum") / (totals[0] * parts), None
        return self.compute(model, batch) / parts, None


def _loss_terms(batch: dict, task: str) -> int:
    """What a micro-batch's loss is a mean over: labelled next-token positions, or examples."""
    if "stand_in" in batch:
        return 0
    if task == "classification":
        return len(batch["labels"])
    # the shift causal_lm_loss applies: position t predicts label t + 1
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _count_samples(batch: dict) -> int:
    return 0 if "stand_in" in batch else len(batch["input_ids"])


def parameter_counts(model) -> dict:
    trainable, total = trainable_parameters(model)
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
    }
