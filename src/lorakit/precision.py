"""The precision a run computes in: `--precision auto | fp32 | bf16 | fp16`.

`auto` picks bf16 only where the machine's bf16 matmul is measured well ahead of fp32 —
a CUDA device that supports bf16, or a CPU with a bf16 matrix engine (AMX, AVX512-BF16)
that a short timed probe confirms — and fp32 everywhere else, so it never makes a run
slower than fp32. On a CPU without those instructions torch's bf16 matmul is a scalar
fallback hundreds of times slower than fp32 (measured: 0.3 vs 126 GFLOP/s), so the flags
are read first and the probe is skipped there.

What bf16 means in lorakit (see README, "Precision"): the frozen base is stored and
multiplied in bf16; LoRA A/B, DoRA magnitudes, trained heads and the optimizer state stay
fp32 (cast to bf16 for the matmul, gradients flowing back into fp32); losses and softmax
accumulate in fp32. Torch only, so every layer may ask.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPES = (torch.float32, torch.bfloat16)  # what the probe compares
# CPU flags of a bf16 matrix engine (Linux /proc/cpuinfo names)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# auto takes bf16 when the probe's square matmul is this much faster than fp32 and its
# skinny (decode-like) one is not slower: below that the cast and elementwise work eat
# the gain (measured: 1.3x at the decode shape gave no faster decode).
MIN_SPEEDUP = 2.0
MIN_SKINNY_SPEEDUP = 1.0
# One sequence at a time (lorakit generate / chat) multiplies single rows: a GEMV, which
# is memory-bound and which oneDNN's bf16 path ran at 0.56x fp32 on an AMX Xeon (10.7 vs
# 19.1 GFLOP/s at 1 x 576 x 1536; batch-1 generation 8.9 vs 12.9 tokens/s). auto keeps
# fp32 there unless the probe's 1-row matmul is at least this fast in bf16.
MIN_ROW_SPEEDUP = 1.0
# Serving batches many tenants' requests, and each must get the tokens it gets alone. bf16
# rounds each matmul after a reduction whose blocking depends on the batch's row count, so a
# request's greedy tokens change with its batch-mates (measured on an AMX Xeon: 773 of 5820
# soak answers changed); fp32 keeps them equal. auto therefore serves in fp32 on a CPU.
SERVING_REASON = (
    "serving: in bf16 a request's tokens would depend on the requests batched with it; fp32 "
    "keeps each equal to its solo run"
)


@dataclass(frozen=True)
class Choice:
    """A resolved precision: its name, why it was picked, and whether the model is kept in
    fp32 and run under autocast instead (full fine-tuning trains every weight: fp32
    masters, bf16 matmuls)."""

    name: str
    reason: str
    autocast: bool = False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen base is stored in."""
        return torch.float32 if self.autocast else DTYPES[self.name]

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def line(self) -> str:
        how = " (fp32 weights under autocast)" if self.autocast else ""
        return f"precision: {self.name}{how} — {self.reason}"


def resolve_precision(
    requested: str,
    device: torch.device,
    *,
    train_all: bool = False,
    single_row: bool = False,
    serving: bool = False,
) -> Choice:
    """The precision `requested` means on `device`. train_all: every weight trains (method
    full), so half precision runs as autocast over fp32 weights, and auto stays fp32 on a
    CPU (autocast there measured slower than fp32). single_row: the work is one sequence
    decoded at a time (generate, chat), so auto also asks the probe's 1-row matmul.
    serving: rows of many tenants share a batch, so auto stays fp32 on a CPU (see
    SERVING_REASON; on CUDA, where fp32 kernels also vary with the batch shape, auto still
    takes bf16)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        name, reason = auto_precision(device)
        if name != "fp32" and train_all and device.type == "cpu":
            name, reason = "fp32", "full fine-tuning on a CPU: autocast measured slower than fp32"
        if name != "fp32" and serving and device.type == "cpu":
            name, reason = "fp32", f"{SERVING_REASON} (batched work would take bf16: {reason})"
        if name != "fp32" and single_row and device.type == "cpu":
            row = _cpu_row_ratio(torch.get_num_threads())
            if row < MIN_ROW_SPEEDUP:
                name = "fp32"
                reason = (
                    f"one sequence at a time: the bf16 1-row matmul measured {row:.2f}x fp32 "
                    f"(batched work would take bf16: {reason})"
                )
        return Choice(name, reason, autocast=train_all and name != "fp32")
    return Choice(requested, "asked for", autocast=train_all and requested != "fp32")


def auto_precision(device: torch.device) -> tuple[str, str]:
    """("bf16" | "fp32", why) for `device`, measured once per process and device."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type != "cpu":
        return "fp32", f"no bf16 probe for {device.type} devices"
    return _cpu_choice(torch.get_num_threads())


@functools.cache
def _cpu_choice(threads: int) -> tuple[str, str]:
    flags = cpu_bf16_flags()
    if flags is not None and not flags and not _torch_reports_bf16():
        return "fp32", "this CPU has no bf16 matrix instructions (amx_bf16 / avx512_bf16)"
    try:
        square, skinny = probe_bf16_speedup()
    except RuntimeError as exc:  # a build without bf16 kernels
        return "fp32", f"the bf16 probe failed ({str(exc).splitlines()[0][:80]})"
    return decide(square, skinny, flags or set())


@functools.cache
def _cpu_row_ratio(threads: int) -> float:
    """fp32 time / bf16 time of a 1-row matmul of a small decoder's width (1 x 576 x
    1536, the size of SmolLM2's MLP), measured once per process."""
    return _ratio(1, 576, 1536, 50)


def decide(square: float, skinny: float, flags: set[str]) -> tuple[str, str]:
    """The choice from the probe's bf16 / fp32 speed ratios (square and skinny matmul)."""
    have = "/".join(sorted(flags)) or "no bf16 flags read"
    measured = f"bf16 matmul {square:.1f}x fp32 (decode shape {skinny:.1f}x; {have})"
    if square >= MIN_SPEEDUP and skinny >= MIN_SKINNY_SPEEDUP:
        return "bf16", measured
    return "fp32", f"{measured}: below the {MIN_SPEEDUP:g}x that bf16 needs to pay"


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The bf16 matrix flags the CPU reports; None where /proc/cpuinfo cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    words = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            words.update(line.partition(":")[2].split())
    return {f for f in BF16_FLAGS if f in words}


def _torch_reports_bf16() -> bool:
    # oneDNN's own capability check (AVX512-BF16 or AMX); private, so any failure is "no"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probe_bf16_speedup(size: int = 1024, rows: int = 64, reps: int = 5) -> tuple[float, float]:
    """(square, skinny): fp32 time / bf16 time of a 2size x size x size matmul (a batch of
    tokens through a layer) and of a rows x size x size one (the shape of a decode step),
    best of `reps` each after a warm-up. ~0.5 s on a CPU with a bf16 engine. Not size³:
    on an AMX Xeon 1024³ read 1.9x in one process of three (below the threshold) while
    2048 x 1024 x 1024 read 3.0-3.4x in all, as training's shapes did (3.3-6.0x)."""
    return _ratio(2 * size, size, size, reps), _ratio(rows, size, size, reps * 4)


def _ratio(m: int, k: int, n: int, reps: int) -> float:
    """fp32 time / bf16 time of an m x k x n matmul: each dtype's first call untimed (the
    first bf16 call of a process pays for oneDNN's kernel choice and, on AMX, the tile
    state), then the two timed in turn, best of 1 + `reps` each (measured: without the warm-up and the
    interleaving, the 1024^3 ratio ranged 2.0x-4.4x between runs on one machine)."""
    pairs = {d: (torch.randn(m, k, dtype=d), torch.randn(k, n, dtype=d)) for d in _DTYPES}
    best = dict.fromkeys(_DTYPES, float("inf"))
    for dtype, (a, b) in pairs.items():
        a @ b  # untimed: the first call of a process sets up (measured 10-100x a later call)
        start = time.perf_counter()
        a @ b
        best[dtype] = time.perf_counter() - start
        if dtype is torch.bfloat16 and best[dtype] > 20 * best[torch.float32] + 0.01:
            return best[torch.float32] / best[dtype]  # a scalar fallback: one slow run says enough
    for _ in range(reps):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]
