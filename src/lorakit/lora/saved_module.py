"""modules_to_save: a module trained in full, one copy per adapter (e.g. a classifier head)."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
        module = copy.deepcopy(self.original_module)
        for p in module.parameters():
            p.requires_grad_(True)
        self.copies[name] = module
        return module

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
            return self.current()(x, *args, **kwargs)
        return self.rows.saved_forward(self, x, *args, **kwargs)
