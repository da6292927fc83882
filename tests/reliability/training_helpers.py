"""Helpers for the data-safety tests (test_training_files.py, test_output_rules.py): a small
real disk to fill, the CLI run in-process."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
import torch

from lorakit.atomic import is_temp
from lorakit.cli import main


@pytest.fixture(name="one_thread")
def one_thread_fixture():
    # Matmuls of width 32 gain nothing from threads, and lose a lot to a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(name="small_disk")
def small_disk_fixture(tmp_path):
    """(directory, mounted): a 4 MiB tmpfs where this machine lets us mount one (a disk
    that really fills up), else a plain directory (the tests then inject ENOSPC)."""
    root = tmp_path / "disk"
    root.mkdir()
    mounted = bool(shutil.which("mount")) and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True
        ).returncode
        == 0
    )
    yield root, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def fill(directory) -> None:
    """Write zeros into directory/filler until the file system is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def train_args(model, data, out, *extra, steps: int = 6) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--text-column",
        "review",
        "--label-column",
        "mood",
        "--output",
        str(out),
        "--max-steps",
        str(steps),
        "--save-every",
        "2",
        "--batch-size",
        "8",
        "--max-eval-samples",
        "8",
        "--seed",
        "3",
        *extra,
    ]


def fails(capsys, args, *needles) -> str:
    """Run the CLI: exit 2 and exactly one line `error: what — how to fix`, holding needles."""
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and " — " in err[0], err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def succeeds(capsys, args) -> str:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out + captured.err


def temps(root) -> list[str]:
    """lorakit temp names anywhere under root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if is_temp(p.name))


def snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
