"""`torchrun -m lorakit train` with 2 CPU processes (gloo): the same adapter as one process,
exact resume after a SIGKILL, and only rank 0 writes.

Every run here is a real CLI command: torchrun in subprocesses, the single-process
reference in this process (lorakit.cli.main, the same command without a second start-up).
batch_size is the global micro-batch, so both see the same batches; model and LoRA dropout
are 0 (each rank draws its own dropout masks, which no single process could reproduce).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main

TOL = 1e-5
# Slows each optimizer step so the test can SIGKILL the job between two checkpoints; the
# training code is untouched (the wrapper lives only in the torchrun workers' process).
SLOW_DRIVER = """
import sys, time
import lorakit.train.loop as loop
step = loop._step
def slow_step(*args, **kwargs):
    time.sleep(0.3)
    return step(*args, **kwargs)
loop._step = slow_step
from lorakit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "LORAKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


# The runs compared within TOL are fp32: auto takes bf16 on a CPU with a bf16 matrix engine,
# and bf16 rounds sums whose order differs between one process and two (a later
# --precision, as in the bf16 FSDP test, overrides this one).
EXACT = ("--precision", "fp32")


def _torchrun(*args: str) -> list[str]:
    # `python -m torch.distributed.run` is torchrun, without relying on the script on PATH
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        *args,
    ]


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def _single(args: list[str]) -> None:
    """The single-process reference, in this process (no second start-up), on one thread like
    each torchrun worker: on a busy 2-core machine two threads can be several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _trained(tensors: dict) -> float:
    """Largest |B|: B starts at 0, so this is how far training moved the adapter."""
    return max(t.abs().max().item() for k, t in tensors.items() if "lora_B" in k)


def _cls_args(bert_dir, csv, out: Path, *extra: str) -> list[str]:
    # 57 examples in micro-batches of 7: ranks split each 4 / 3, and every epoch ends with a
    # one-example micro-batch (rank 1 then runs a stand-in that counts zero).
    return [
        "train",
        *("--model", str(bert_dir), "--data", str(csv), "--output", str(out)),
        *("--text-column", "review", "--label-column", "mood"),
        *("--max-train-samples", "57", "--batch-size", "7", "--grad-accum", "2"),
        *("--max-steps", "12", "--save-every", "3", "--lr", "1e-2", "--seed", "3"),
        *("--model-dropout", "0", "--max-eval-samples", "8", "--device", "cpu"),
        *EXACT,
        *extra,
    ]


def _lm_args(llama_dir, jsonl, out: Path, *extra: str) -> list[str]:
    # lr 1e-2, not higher: Adam magnifies rounding, and at 3e-2 one process on 1 vs 2 threads
    # already differs by 5e-6 here; at 1e-2 that floor is 2e-7 and 2 processes land ≤ 5e-7.
    return [
        "train",
        *("--model", str(llama_dir), "--task", "causal-lm", "--data", str(jsonl)),
        *("--output", str(out), "--max-train-samples", "29", "--batch-size", "7"),
        *("--grad-accum", "2", "--max-steps", "8", "--save-every", "4", "--lr", "1e-2"),
        *("--max-length", "200", "--max-eval-samples", "4", "--model-dropout", "0"),
        *("--device", "cpu", *EXACT),
        *extra,
    ]


@pytest.fixture(scope="module")
def cls_runs(tmp_path_factory, bert_dir, sentiment_csv):
    """The classifier trained by one process and by `torchrun --nproc-per-node 2`."""
    tmp = tmp_path_factory.mktemp("ddp-cls")
    _single(_cls_args(bert_dir, sentiment_csv, tmp / "single"))
    ddp = _run(
        _torchrun("-m", "lorakit", *_cls_args(bert_dir, sentiment_csv, tmp / "ddp")), _env(tmp)
    )
    return tmp, ddp


def test_ddp_classifier_equals_one_process(cls_runs):
    tmp, _ = cls_runs
    single, ddp = _adapter(tmp / "single"), _adapter(tmp / "ddp")
    assert _trained(single) > 1e-3
    assert _max_diff(single, ddp) <= TOL
    a = json.loads((tmp / "single/metrics.json").read_text())
    b = json.loads((tmp / "ddp/metrics.json").read_text())
    # samples and tokens are counted over both ranks; the test metrics are the same numbers
    assert (a["train_samples"], a["train_tokens"]) == (b["train_samples"], b["train_tokens"])
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=TOL)


def test_only_rank_zero_writes_and_logs(cls_runs):
    tmp, ddp = cls_runs
    out = tmp / "ddp"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    hidden = [n for n in names if Path(n).name.startswith(".") and n != ".lorakit-run"]
    assert not hidden and not [n for n in names if n.endswith(".tmp")], names
    assert ".lorakit-run" in names  # the run is marked as lorakit's
    assert len(list((out / "tensorboard").iterdir())) == 1  # one writer, not one per rank
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000009",
        "step-00000012",
    ]
    assert len((out / "train_log.csv").read_text().splitlines()) == 13
    text = ddp.stdout + ddp.stderr
    assert text.count("done: 12 steps") == 1 and text.count("trainable params:") == 1, text
    # every rank's RNG state is in the checkpoint, so each resumes its own dropout stream
    extra = torch.load(out / "checkpoints/step-00000012/optimizer.pt", weights_only=True)
    assert len(extra["rng_ranks"]) == 2
    assert not torch.equal(extra["rng_ranks"][0], extra["rng_ranks"][1])


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent's pid
            kids.append(int(stat.parent.name))
    return kids


def test_killed_ddp_run_resumes_to_the_uninterrupted_adapter(
    cls_runs, tmp_path, bert_dir, sentiment_csv
):
    tmp, _ = cls_runs
    env, out = _env(tmp_path), tmp_path / "killed"
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_DRIVER)
    job = subprocess.Popen(
        _torchrun(str(driver), *_cls_args(bert_dir, sentiment_csv, out)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpts, deadline = out / "checkpoints", time.time() + 240
    while not (ckpts / "step-00000006").is_dir():
        assert job.poll() is None, job.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    time.sleep(0.45)  # mid-way between checkpoints 6 and 9
    # torchrun starts each worker in its own session: kill the launcher, then its workers
    workers = _children(job.pid)
    assert len(workers) == 2, workers
    for pid in [job.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert not (out / "adapter").exists()  # killed before the end
    assert all(p.name.startswith("step-") for p in ckpts.iterdir())  # none half-written

    again = _run(
        _torchrun("-m", "lorakit", *_cls_args(bert_dir, sentiment_csv, out, "--resume")), env
    )
    assert "resumed from step" in again.stdout + again.stderr
    straight = _adapter(tmp / "ddp")
    assert _max_diff(straight, _adapter(out)) <= TOL
    losses = [r.split(",")[2] for r in (out / "train_log.csv").read_text().splitlines()[1:]]
    expected = [r.split(",")[2] for r in (tmp / "ddp/train_log.csv").read_text().splitlines()[1:]]
    assert [float(x) for x in losses] == pytest.approx([float(x) for x in expected], abs=TOL)


@pytest.fixture(scope="module")
def lm_single(tmp_path_factory, llama_model_dir, qa_jsonl):
    out = tmp_path_factory.mktemp("lm") / "single"
    _single(_lm_args(llama_model_dir, qa_jsonl, out))
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_causal_lm_equals_one_process(lm_single, tmp_path, llama_model_dir, qa_jsonl, mode):
    """The loss is a mean over labelled tokens: each rank divides its sum by the global count.
    FSDP (CPU, gloo) reduce-scatters the same sums, so it meets the same tolerance."""
    out = tmp_path / mode
    args = _lm_args(llama_model_dir, qa_jsonl, out, "--distributed", mode)
    _run(_torchrun("-m", "lorakit", *args), _env(tmp_path))
    single = _adapter(lm_single)
    assert _trained(single) > 1e-3
    assert _max_diff(single, _adapter(out)) <= TOL


def test_refusal_is_a_one_line_error_and_exit_2(cls_runs, bert_dir, sentiment_csv):
    """An existing output without --overwrite: each rank refuses before writing anything.

    torchrun stops the other ranks as soon as the first one exits, so one or both ranks
    get to print their line; each line printed is the one-line refusal."""
    tmp, _ = cls_runs
    out = tmp / "ddp"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    cmd = _torchrun("-m", "lorakit", *_cls_args(bert_dir, sentiment_csv, out))
    done = subprocess.run(cmd, env=_env(tmp), capture_output=True, text=True, timeout=300)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert 1 <= len(errors) <= 2, done.stderr[-3000:]
    assert all("already exists" in e for e in errors), done.stderr[-3000:]
    # no Python traceback from lorakit's own code (torchrun prints its own for the failed child)
    assert "src/lorakit/" not in done.stderr and "site-packages/lorakit/" not in done.stderr
    # the workers exit 2; torchrun itself reports them and exits 1 (its own convention)
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.fixture(scope="module")
def lm_single_int8(tmp_path_factory, llama_model_dir, qa_jsonl):
    out = tmp_path_factory.mktemp("lm-int8") / "single"
    _single(_lm_args(llama_model_dir, qa_jsonl, out, "--quantize", "int8"))
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_quantized_base_equals_one_process(
    lm_single_int8, tmp_path, llama_model_dir, qa_jsonl, mode
):
    """--quantize int8 under DDP / FSDP: each rank quantizes its own replica identically (the
    codes are buffers: FSDP shards the float parameters and leaves them whole on every rank)
    and only the adapter's gradients travel, so two processes train the one-process adapter."""
    out = tmp_path / mode
    args = _lm_args(llama_model_dir, qa_jsonl, out, "--quantize", "int8", "--distributed", mode)
    _run(_torchrun("-m", "lorakit", *args), _env(tmp_path))
    expected = _adapter(lm_single_int8)
    assert _trained(expected) > 1e-3
    assert _max_diff(expected, _adapter(out)) <= TOL
    assert json.loads((out / "config.json").read_text())["quantize"] == "int8"


def _pref_args(llama_dir, prefs, out: Path, objective: str) -> list[str]:
    # 11 pairs in micro-batches of 5: ranks split each 3 / 2, and every epoch ends with a
    # one-pair micro-batch (rank 1 then runs a stand-in); DPO's 3 reference batches split
    # 2 / 1 between the ranks (rank 1 scores one again to match rank 0's forwards). beta 0.1
    # and lr 3e-3 keep the loss off 0: at beta 0.5, lr 1e-2 it reaches 1e-6 by step 4, and
    # Adam blows the then-tiny gradients' rounding up to 7e-5 in the adapter.
    return [
        "train",
        *("--model", str(llama_dir), "--task", "causal-lm", "--data", str(prefs)),
        *("--objective", objective, "--beta", "0.1", "--output", str(out)),
        *("--max-train-samples", "11", "--batch-size", "5", "--grad-accum", "2"),
        *("--max-steps", "4", "--save-every", "4", "--lr", "3e-3", "--max-eval-samples", "4"),
        *("--model-dropout", "0", "--device", "cpu", *EXACT),
    ]


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_preference_objectives_equal_one_process(tmp_path, llama_model_dir, prefs_jsonl, objective):
    """DPO's loss is a mean over pairs, ORPO's a mean over pairs plus one over chosen tokens:
    each rank divides its sums by the global counts of both, so DDP is the same loss."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _single(_pref_args(llama_model_dir, prefs_jsonl, single, objective))
    _run(
        _torchrun("-m", "lorakit", *_pref_args(llama_model_dir, prefs_jsonl, ddp, objective)),
        _env(tmp_path),
    )
    expected = _adapter(single)
    assert _trained(expected) > 1e-3
    assert _max_diff(expected, _adapter(ddp)) <= TOL
    logs = [(out / "train_log.csv").read_text().splitlines() for out in (single, ddp)]
    header = logs[0][0].split(",")
    assert "reward_accuracy" in header and logs[1][0] == logs[0][0]
    for name in ("loss", "reward_accuracy", "reward_margin", "chosen_logps"):
        col = header.index(name)
        a, b = ([float(r.split(",")[col]) for r in log[1:]] for log in logs)
        assert b == pytest.approx(a, abs=TOL), name


def test_fsdp_shards_a_bf16_base_under_fp32_adapters(tmp_path, llama_model_dir, qa_jsonl):
    """--precision bf16 under FSDP: every block holds bf16 base weights and fp32 adapters in
    one unit, saved in fp32. Not bitwise the one-process run, as in fp32: the A and B cast
    to bf16 for each step's matmuls turn an fp32 rounding difference (a sum over ranks in
    another order) into a bf16 one, which Adam then carries (measured: DDP and FSDP differ
    from each other as much as from one process). So the runs are compared by their losses."""
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    args = _lm_args(llama_model_dir, qa_jsonl, fsdp, "--precision", "bf16", "--distributed", "fsdp")
    _run(_torchrun("-m", "lorakit", *args), _env(tmp_path))
    _single(_lm_args(llama_model_dir, qa_jsonl, single, "--precision", "bf16"))
    assert json.loads((fsdp / "metrics.json").read_text())["precision"] == "bf16"
    got = _adapter(fsdp)
    assert {t.dtype for t in got.values()} == {torch.float32} and _trained(got) > 1e-3

    def losses(out):
        return [
            float(r.split(",")[2]) for r in (out / "train_log.csv").read_text().splitlines()[1:]
        ]

    assert losses(fsdp) == pytest.approx(losses(single), rel=0.02)
    assert losses(fsdp)[-1] < 0.9 * losses(fsdp)[0]
