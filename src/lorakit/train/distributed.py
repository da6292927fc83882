"""Data-parallel training under torchrun: the process group and the collectives the loop needs.

torchrun starts one process per device and tells each its place in WORLD_SIZE / RANK /
LOCAL_RANK. Without that environment (or with WORLD_SIZE=1) nothing here touches
torch.distributed: rank() is 0, world() is 1 and every collective is a no-op, so a plain
`lorakit train` runs exactly the single-process code.

Gradients are summed by hand after backward (flattened into a few buckets) rather than by
wrapping the model in DistributedDataParallel: only the trainable parameters travel (a
LoRA step sends kilobytes, not the frozen base), the result is the same on every rank and
in the same order every run, and the model stays the plain module that save_adapter,
evaluation and checkpoints already understand.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.distributed as dist

from lorakit.errors import ConfigError

BUCKET_NUMEL = 1 << 24  # elements per all-reduce (64 MB of fp32): few calls, bounded extra memory

_owned = False  # whether setup() created the process group (and teardown() may destroy it)


def launched() -> bool:
    """True when torchrun (or srun + torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without torchrun); read from the environment when the
    group is not (or no longer) initialized, so is_main() stays right after teardown()."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def is_main() -> bool:
    """Rank 0: the one process that logs and writes files."""
    return rank() == 0


def rank_seed(base: int, rank: int) -> int:
    """A seed for `rank`'s own RNG stream, derived from `base` (a run's seed or step)."""
    return base * 1_000_003 + rank


def main_only(log):
    """`log` on rank 0, a no-op on the other ranks: one voice for the whole job."""
    return log if is_main() else _silent


def _silent(*args, **kwargs) -> None:
    pass


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); returns this rank's device.

    On CUDA each process owns GPU LOCAL_RANK of its node. Idempotent, and a no-op outside
    torchrun; a group the caller initialized is used as is and left for them to destroy.
    """
    global _owned
    if not launched():
        return device
    if device.type == "cuda":
        local, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= visible:
            raise ConfigError(
                f"torchrun process {local} of this node has no GPU of its own ({visible} "
                f"visible) — use --nproc-per-node {visible} or fewer"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # device_id binds NCCL to this rank's GPU up front (no guessing in barrier()).
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        _owned = True
    return device


def teardown() -> None:
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    if active():
        dist.barrier()


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    bucket, size = [], 0
    for t in tensors:
        if bucket and size + t.numel() > BUCKET_NUMEL:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def _flat_collective(tensors: list[torch.Tensor], collective) -> None:
    """Run `collective` in place on `tensors`, one flat buffer per bucket of one dtype/device."""
    kinds: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for t in tensors:
        kinds[(t.dtype, t.device)].append(t)
    for same in kinds.values():
        for bucket in _buckets(same):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            collective(flat)
            for t, part in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
                t.copy_(part.view_as(t))


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place, in as few collectives as the buckets allow."""
    if active():
        _flat_collective(tensors, lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))


def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Overwrite `tensors` on every rank with rank 0's values, in place."""
    if active():
        with torch.no_grad():
            _flat_collective(tensors, lambda flat: dist.broadcast(flat, src=0))


def sum_gradients(params: list[torch.nn.Parameter], extra: torch.Tensor) -> None:
    """Sum the gradients of `params` over ranks in place, and `extra` (e.g. the step's loss)
    with them in the same buffers.

    A rank without a gradient for a parameter counts zero; a gradient stays None only where
    no rank had one, so AdamW skips exactly the parameters a single process would skip.
    """
    if not active():
        return
    had = torch.tensor([p.grad is not None for p in params], dtype=extra.dtype, device=extra.device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    all_reduce_sum([*grads, had, extra])
    for p, grad, n in zip(params, grads, had.tolist(), strict=True):
        p.grad = grad if n else None


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order ([obj] outside torchrun)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
