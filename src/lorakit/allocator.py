"""The C heap under CPU training: hand freed memory back to the system (glibc only).

torch allocates CPU tensors with malloc. glibc serves a block above its mmap threshold with
its own mapping (returned on free) and everything below from its heaps (kept for reuse). The
threshold starts at 128 KiB but rises to the size of every mapped block that is freed, up to
32 MiB — so after the first few activations are freed, every later activation (a few MB
each) comes from the heap, and a training step that interleaves long-lived tensors (saved
inputs, gradients, quantized codes) with short-lived ones leaves holes the heap never
returns. Measured on SmolLM2-135M, LoRA with activation checkpointing (BENCHMARKS.md, #8):
the int8 base's run ended *above* the fp32 one, from heap growth alone.

Setting the threshold explicitly turns the dynamic rise off: blocks from `threshold` up are
mapped and returned on free, smaller ones reuse the heap. The price is fresh pages (page
faults) for every large tensor — some step time. `lorakit train` does this for the run when
it asks for low memory (`release_memory`, on by default with `--quantize` or
`--activation-checkpointing` on CPU). The setting is process-wide; after the run the
threshold is set high again (AFTER_RUN_THRESHOLD).

Other C libraries (musl, macOS) and CUDA memory are left alone: both functions return False.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
# 64 KiB: every activation of a small model is above it. Measured against 1 MiB and 4 MiB in
# BENCHMARKS.md (#8): 4 MiB kept most of the growth; 64 KiB and 1 MiB alike released it.
MMAP_THRESHOLD = 1 << 16
# After a run: the ceiling glibc's dynamic threshold climbs to on 64-bit (and where it sits
# once a program has freed a few large blocks), so later work in the process is not paying
# page faults for every tensor. The dynamic rise itself cannot be switched back on.
AFTER_RUN_THRESHOLD = 32 << 20


def _glibc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Map (and unmap on free) every block of at least `threshold` bytes; True if set."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))


@contextlib.contextmanager
def large_blocks_returned(enabled: bool = True):
    """Within the block, `return_large_blocks()`; after it, AFTER_RUN_THRESHOLD. Yields
    whether the policy is in force (False when disabled or not glibc)."""
    applied = enabled and return_large_blocks()
    try:
        yield applied
    finally:
        if applied:
            return_large_blocks(AFTER_RUN_THRESHOLD)


def release_freed() -> bool:
    """Return the free pages of every heap to the system now (malloc_trim); True if any."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
