"""release_memory: freed CPU tensor memory goes back to the system (glibc's mmap threshold)."""

import platform
import subprocess
import sys

import pytest
import torch

from lorakit.cli import main
from lorakit.config import TrainConfig
from lorakit.train.memory import wants_release_memory

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# One 1 MB tensor freed (glibc's dynamic threshold then rises to 1 MB), then 200 MB of 1 MB
# tensors with a 16 KB long-lived tensor after each (what saved inputs and gradients do in
# a training step), then the large ones freed: how much of the 200 MB leaves the process?
_PATTERN = """
import sys, torch
from lorakit.allocator import release_freed, return_large_blocks

def anon_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024

if sys.argv[1] == "release":
    assert return_large_blocks()
if sys.argv[1] == "after-run":  # a low-memory run came and went in this process
    from lorakit.allocator import large_blocks_returned

    with large_blocks_returned() as applied:
        assert applied
del_first = torch.ones(1 << 18)
del del_first
big, keep = [], []
for _ in range(200):
    big.append(torch.ones(1 << 18))
    keep.append(torch.ones(4096))
before = anon_mb()
del big
after = anon_mb()
release_freed()
print(before - after, before - anon_mb())
"""


def _returned(mode: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PATTERN, mode], capture_output=True, text=True, check=True
    )
    freed, after_trim = map(float, out.stdout.split())
    return freed, after_trim


@pytest.mark.skipif(not GLIBC, reason="the policy is glibc's mallopt; other C libraries: no-op")
def test_freed_tensors_leave_the_process_only_with_the_policy():
    kept, trimmed = _returned("default")
    released, _ = _returned("release")
    after_run, _ = _returned("after-run")
    # measured: default 0 MB returned on free (all 200 MB back after malloc_trim); policy 200
    assert released > 190, released
    assert kept < 50, kept  # glibc's own behaviour, the reason for the policy
    assert trimmed > 190, trimmed  # release_freed (run after quantize) returns the rest
    assert after_run < 50, after_run  # after the run: the heap serves 1 MB blocks again


def _config(**kw) -> TrainConfig:
    return TrainConfig(model="m", data="d.jsonl", task="causal-lm", output="o", **kw)


def test_policy_is_on_by_default_only_for_runs_that_asked_for_low_memory():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not wants_release_memory(_config(), cpu)
    assert not wants_release_memory(_config(release_memory=False, quantize="int8"), cpu)
    assert not wants_release_memory(_config(quantize="int8"), cuda)  # device memory: not malloc's
    assert wants_release_memory(_config(quantize="int8"), cpu)
    assert wants_release_memory(_config(activation_checkpointing=True), cpu)
    assert wants_release_memory(_config(release_memory=True), cuda)


def test_cli_flags(capsys):
    for flag, value in [("--release-memory", "true"), ("--keep-memory", "false")]:
        assert main(["train", "--model", "m", "--data", "d.jsonl", flag, "--print-config"]) == 0
        assert f"release_memory: {value}" in capsys.readouterr().out


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss crosses exec on Linux")
def test_peak_memory_is_the_run_own_not_its_parents():
    """A sweep starts each run from a larger process: the run must report its own peak."""
    from lorakit.eval.measure import peak_memory_mb

    ballast = torch.ones(400 * 2**18)  # 400 MB, touched, in this (the parent) process
    code = "from lorakit.eval.measure import peak_memory_mb; print(peak_memory_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child, parent = float(out.stdout), peak_memory_mb()
    assert ballast.sum().item() == 400 * 2**18
    assert child < parent - 300, (child, parent)
