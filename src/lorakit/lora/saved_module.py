"""modules_to_save: a module trained in full, one copy per adapter (e.g. a classifier head)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lorakit.errors import ConfigError
from lorakit.lora.layer import is_quantized


class ModulesToSave(nn.Module):
    """Holds the original module and a trainable copy per adapter.

    Forward runs the copy of the first active adapter that has one, else the original.
    Under `adapter_per_row`, each row goes through its own adapter's copy.
    """

    def __init__(self, original_module: nn.Module):
        super().__init__()
        self.original_module = original_module
        self.copies = nn.ModuleDict()
        self.active: list[str] = []
        self.disabled = False
        self.rows = None  # a lora.layer.PerRow, set by lorakit.lora.per_row.adapter_per_row

    def add_copy(self, name: str) -> nn.Module:
        if is_quantized(self.original_module):  # its codes cannot take the saved weights
            raise ConfigError(
                f"this adapter trains its own copy of a {self.original_module.quant_type}-"
                f"quantized module ({type(self.original_module).__name__}) — load it on a base "
                "that is not quantized (drop --quantize)"
            )
        module = copy.deepcopy(self.original_module)
        # A trained copy is fp32 whatever the base is stored in (--precision bf16): its
        # AdamW state and updates need fp32, and it is saved as fp32 like every adapter.
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in module.parameters()):
            module.float()
        for p in module.parameters():
            p.requires_grad_(True)
        self.copies[name] = module
        return module

    def call(self, module: nn.Module, x: torch.Tensor, *args, **kwargs):
        """`module`(x): an fp32 copy inside a half-precision model takes its input in fp32
        and hands its output back in the dtype the original would have produced."""
        if module is self.original_module:
            return module(x, *args, **kwargs)
        want = _float_dtype(self.original_module)
        have = _float_dtype(module)
        if want is None or want == have:
            return module(x, *args, **kwargs)
        if x.is_floating_point():
            x = x.to(have)
        out = module(x, *args, **kwargs)
        return out.to(want) if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def current(self) -> nn.Module:
        if not self.disabled:
            for name in self.active:
                if name in self.copies:
                    return self.copies[name]
        return self.original_module

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "copies"):
                raise
            return getattr(self.current(), name)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.rows is None or self.disabled:
            return self.call(self.current(), x, *args, **kwargs)
        return self.rows.saved_forward(self, x, *args, **kwargs)


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None
