"""`--distributed fsdp`: FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state.

Every block of the model (each element of a ModuleList: the transformer layers) and then
the whole model become one `fully_shard` unit: a unit's weights are gathered just before
its forward and backward and freed after, so a rank holds 1/world of the model between
them. Gradients are reduce-scattered with a plain SUM (the loop's losses are already
divided by the global count, as under DDP).

Checkpoints and the saved adapter hold full tensors in the same layout as DDP and single-
process runs write, so any of them can resume a run made by another. The helpers here are
collectives under FSDP (every rank must call them, in the same order) and plain reads and
writes otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lorakit.device import in_process_group, is_sharded
from lorakit.errors import ConfigError


def _is_dtensor(t) -> bool:
    if not in_process_group():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The outermost ModuleLists' elements that hold parameters (transformer layers)."""
    blocks, lists = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(f"{n}.") for n in lists):
            lists.append(name)
            blocks += [b for b in module if any(True for _ in b.parameters())]
    return blocks


def shard(model: nn.Module) -> nn.Module:
    """fully_shard each block, then the model (which then holds the embeddings and head:
    tied input/output embeddings must share one unit)."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:  # FSDP2's public API arrived in torch 2.6
        raise ConfigError(
            f"--distributed fsdp needs FSDP2 (torch >= 2.6; this is {torch.__version__}) — "
            "upgrade torch or use --distributed ddp"
        ) from None
    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # SUM, not FSDP's default mean over ranks; set as a plain SUM reduce-scatter,
            # because gloo (CPU) has no PREMUL_SUM.
            module.set_gradient_divide_factor(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):  # absent in older FSDP2
                module.set_force_sum_reduction_for_comms(True)
    return model


def _reshard(model: nn.Module) -> None:
    # After an evaluation forward (no backward) the root unit keeps its weights gathered, in
    # buffers FSDP may free; resharding puts every parameter back in its DTensor form.
    if is_sharded(model):
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank for a sharded one (a collective)."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def full_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole (a collective under FSDP), as a checkpoint holds it."""
    _reshard(model)
    return {
        n: full(p.detach()).contiguous().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every sharded state tensor gathered whole (a collective)."""
    state = optimizer.state_dict()
    state["state"] = {
        i: {k: full(v) for k, v in per_param.items()} for i, per_param in state["state"].items()
    }
    return state


def copy_full_(param: torch.Tensor, value: torch.Tensor) -> None:
    """param <- value, where value is the whole tensor and param may be this rank's shard."""
    if _is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: every rank read the same file, so each cuts its own shard
        value = distribute_tensor(
            value.to(param.device, param.dtype),
            param.device_mesh,
            param.placements,
            src_data_rank=None,
        )
    param.copy_(value)


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A full optimizer state dict (as full_optimizer_state wrote it) cut to this rank's
    shards, ready for optimizer.load_state_dict."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(_is_dtensor(p) for p in params):
        return state
    from torch.distributed.tensor import distribute_tensor

    out = dict(state)
    out["state"] = {}
    for i, per_param in state["state"].items():
        p = params[int(i)]
        out["state"][i] = {
            k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            if _is_dtensor(p) and isinstance(v, torch.Tensor) and v.shape == p.shape
            else v
            for k, v in per_param.items()
        }
    return out


@contextlib.contextmanager
def gathered(model: nn.Module, trainable_only: bool = True) -> Iterator[nn.Module]:
    """Within the block, the model's sharded parameters are whole (a collective on entry).

    For writing the adapter (trainable_only) or the whole model: readers that know nothing
    of FSDP see plain tensors. Tied parameters stay tied. No forward pass inside.
    """
    if not is_sharded(model):
        yield model
        return
    _reshard(model)
    whole: dict[int, nn.Parameter] = {}
    swapped = []
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if not _is_dtensor(p) or (trainable_only and not p.requires_grad):
                continue
            if id(p) not in whole:
                whole[id(p)] = nn.Parameter(p.full_tensor().detach(), p.requires_grad)
            module._parameters[name] = whole[id(p)]
            swapped.append((module, name, p))
    try:
        yield model
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p
