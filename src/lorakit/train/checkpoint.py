"""Training checkpoints: complete or absent, last K kept, exact resume.

A checkpoint is a directory `step-00000042/` holding the trainable tensors
(safetensors), the optimizer state and RNG state (torch.save, read back with
weights_only=True) and `state.json` (step, epoch, position in the epoch, log so far).
It is built in a temp directory and renamed into place, so a kill at any moment leaves
either the previous checkpoint or the new one.
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

from lorakit.atomic import atomic_dir
from lorakit.errors import LorakitError

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    tokens: int = 0
    samples: int = 0
    seconds: float = 0.0  # training wall time before this process
    log: list[dict] = field(default_factory=list)


def save_checkpoint(
    root: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    keep_last: int,
) -> Path:
    path = Path(root) / f"step-{state.step:08d}"
    tensors = {
        n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad
    }
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()},
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore trainable tensors, optimizer and RNG from `path`; return the saved TrainState."""
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        state = TrainState(**json.loads((path / "state.json").read_text()))
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
            p.copy_(tensors[name])
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["rng"])
    return state
