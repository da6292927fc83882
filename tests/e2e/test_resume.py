"""SIGKILL a real training process mid-run, resume it, and get the uninterrupted run's adapter."""

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

# Slows each optimizer step a little so the test can kill the process between checkpoints;
# the training code itself is untouched (this wrapper lives only in the test's process).
DRIVER = """
import sys, time
import lorakit.train.loop as loop
step = loop._step
def slow_step(*args, **kwargs):
    time.sleep(0.15)
    return step(*args, **kwargs)
loop._step = slow_step
from lorakit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(bert_dir, csv, out, *extra):
    return [
        "train",
        "--model",
        str(bert_dir),
        "--data",
        str(csv),
        "--text-column",
        "review",
        "--label-column",
        "mood",
        "--output",
        str(out),
        "--max-steps",
        "24",
        "--batch-size",
        "8",
        "--lr",
        "5e-3",
        "--save-every",
        "3",
        "--max-eval-samples",
        "8",
        "--seed",
        "7",
        *extra,
    ]


def _env(tmp_path):
    return {**os.environ, "LORAKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def test_killed_run_resumes_to_identical_adapter(tmp_path, bert_dir, sentiment_csv):
    env = _env(tmp_path)
    # the uninterrupted run alongside the one to kill: one thread each, so on 2 cores they
    # do not slow each other much, and the result does not depend on what else runs
    straight = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *_args(bert_dir, sentiment_csv, tmp_path / "a")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    out = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *_args(bert_dir, sentiment_csv, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    ckpts = out / "checkpoints"
    while time.time() < deadline:
        done = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
        if "step-00000009" in done:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    time.sleep(0.2)  # mid-way between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapter").exists()  # killed before the end
    assert all(p.name.startswith("step-") for p in ckpts.iterdir())  # no half-written checkpoint
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err.decode()[-2000:]

    again = subprocess.run(
        [sys.executable, "-c", DRIVER, *_args(bert_dir, sentiment_csv, out, "--resume")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step" in again.stdout + again.stderr

    a = load_file(tmp_path / "a/adapter/adapter_model.safetensors")
    b = load_file(out / "adapter/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = (tmp_path / "a/train_log.csv").read_text().splitlines()
    log_b = (out / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[2] for row in log_a] == [
        row.split(",")[2] for row in log_b
    ]  # same losses
