"""Giving back the pages of a memory-mapped checkpoint once its weights are replaced.

safetensors loads by memory-mapping the file: fp32 weights read while quantizing stay
resident (and one live view keeps the whole mapping) unless they are paged out and copied
out of the mapping. Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch
from torch import nn

_MADV_PAGEOUT = 21  # Linux >= 5.4


def page_out(t: torch.Tensor) -> None:
    """Ask the kernel to reclaim the pages of a weight that views a memory-mapped checkpoint,
    once its codes exist: without this, quantizing reads every fp32 page and all of them stay
    resident until the last one is done (a load-time peak of the whole fp32 model). A hint
    that never loses data: clean file pages are read again if touched, changed ones are kept
    (or swapped). Errors (older kernels, other systems) are ignored."""
    if t.device.type != "cpu" or t.untyped_storage().resizable() or sys.platform != "linux":
        return
    page = mmap.PAGESIZE
    start = -(-t.data_ptr() // page) * page  # whole pages inside the tensor only
    end = (t.data_ptr() + t.numel() * t.element_size()) // page * page
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


def own_remaining(model: nn.Module) -> None:
    """Copy tensors that are views of a memory-mapped file (safetensors loads that way; such
    storages are not resizable). One live view keeps the whole mapping, and every page of it
    ever read, resident: without this the freed fp32 weights would stay in RSS."""
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and not p.untyped_storage().resizable():
                p.data = p.data.clone()  # same Parameter object: ties and requires_grad kept
        for name, b in module._buffers.items():
            if b is not None and not b.untyped_storage().resizable():
                module._buffers[name] = b.clone()
