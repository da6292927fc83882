"""Training checkpoints: complete or absent, last K kept, exact resume.

A checkpoint is a directory `step-00000042/` holding the trainable tensors
(safetensors), the optimizer state and RNG state (torch.save, read back with
weights_only=True; under torchrun, every rank's RNG state; and the objective's own tensors:
DPO's reference log-probs known so far) and `state.json` (step, epoch, position in the
epoch, log so far). Tensors are whole even under FSDP, so single-process,
DDP and FSDP runs read each other's checkpoints.
It is built in a temp directory and renamed into place, so a kill at any moment leaves
either the previous checkpoint or the new one (plus, after a kill, the temp directory
`.step-N.XXXXXXXX.tmp`, removed when the run is resumed); a full disk is a one-line
WriteError with the temp directory removed and the earlier checkpoints as they were.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.atomic import atomic_dir, save_stream
from lorakit.errors import LorakitError
from lorakit.train.distributed import rank_seed
from lorakit.train.fsdp import (
    copy_full_,
    full_optimizer_state,
    full_trainable,
    shard_optimizer_state,
)

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    tokens: int = 0
    samples: int = 0
    seconds: float = 0.0  # training wall time before this process
    precision: str = "fp32"  # what the steps so far computed in (older runs: fp32)
    log: list[dict] = field(default_factory=list)


def trainable_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(trainable tensors, optimizer state) as a checkpoint holds them: whole tensors.

    Under FSDP this gathers the shards, a collective: every rank calls it, rank 0 saves.
    """
    return full_trainable(model), full_optimizer_state(optimizer)


def save_checkpoint(
    root: Path,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: TrainState,
    keep_last: int,
    rng_ranks: list[torch.Tensor] | None = None,
    objective_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `step-N/` from trainable_state(); rng_ranks: every rank's RNG state under
    torchrun (rank order); objective_state: what the objective keeps (PairTraining)."""
    path = Path(root) / f"step-{state.step:08d}"
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "trainable.safetensors"))
        extra = {"optimizer": optimizer_state, "rng": torch.get_rng_state()}
        if rng_ranks:
            extra["rng_ranks"] = rng_ranks
        if objective_state is not None:
            extra["objective"] = objective_state
        save_stream(tmp / "optimizer.pt", lambda f: torch.save(extra, f))
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def _read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((Path(path) / "state.json").read_text()))


def checkpoint_precision(path: Path) -> str | None:
    """The precision the steps up to checkpoint `path` computed in; None if unreadable
    (load_checkpoint then says why)."""
    try:
        return _read_state(path).precision
    except (OSError, ValueError, TypeError):
        return None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int = 0,
    objective=None,
) -> TrainState:
    """Restore trainable tensors, optimizer and RNG from `path`; return the saved TrainState.

    `rank` picks that rank's RNG state from a torchrun checkpoint. A rank the checkpoint has
    no state for (resumed with more processes) gets a fresh stream of its own. `objective`
    (a PairTraining) gets its saved state back through load_state_dict.
    """
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        state = _read_state(path)
    except Exception as exc:  # any unreadable piece means this checkpoint cannot be resumed
        raise LorakitError(
            f"checkpoint {path} is unreadable ({exc}) — delete it to resume from an earlier one"
        ) from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        raise LorakitError(
            f"checkpoint {path} was written by a different training setup — resume with the same config"
        )
    with torch.no_grad():
        for name, p in params.items():
            copy_full_(p, tensors[name])
    optimizer.load_state_dict(shard_optimizer_state(optimizer, extra["optimizer"]))
    if objective is not None:
        objective.load_state_dict(extra.get("objective"))
    rngs = extra.get("rng_ranks") or [extra["rng"]]
    if rank < len(rngs):
        torch.set_rng_state(rngs[rank])
    else:
        torch.manual_seed(rank_seed(state.step, rank))
    return state
