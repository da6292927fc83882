"""`lorakit train` and the user's files: --overwrite deletes only a lorakit run, a full disk
is one line and loses no checkpoint, a kill leaves nothing behind that a resume trips on,
--resume refuses changed data or base model, bad text columns and templates are one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import lorakit.train.loop as loop
from lorakit.atomic import MARKER
from reliability.training_helpers import (  # noqa: F401 (fixtures)
    fails,
    fill,
    one_thread_fixture,
    small_disk_fixture,
    snapshot,
    succeeds,
    temps,
    train_args,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path, sentiment_csv):
    """The tiny sentiment CSV, copied so a test may edit it."""
    path = tmp_path / "data" / "reviews.csv"
    path.parent.mkdir()
    shutil.copy(sentiment_csv, path)
    return path


def _checkpoint_steps(run: Path) -> list[int]:
    """Steps of the complete checkpoints, each read back in full."""
    steps = []
    for d in sorted((run / "checkpoints").iterdir()):
        if d.name.startswith("step-"):
            assert load_file(d / "trainable.safetensors")  # tensors readable
            torch.load(d / "optimizer.pt", weights_only=True)
            steps.append(json.loads((d / "state.json").read_text())["step"])
    return steps


# -- --overwrite ---------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_of_user_files(capsys, tmp_path, bert_dir, data):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "sub" / "config.json").write_text("{}")
    before = snapshot(out)
    fails(capsys, train_args(bert_dir, data, out, "--overwrite"), "not a lorakit output", MARKER)
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["notes.txt", "sub"]


def test_overwrite_refuses_what_holds_the_data_the_model_or_the_working_dir(
    capsys, tmp_path, bert_dir, data, monkeypatch
):
    data_before = data.read_bytes()
    # even a directory that carries lorakit's marker: the data inside it wins
    project = data.parent.parent
    (project / MARKER).write_text(json.dumps({"kind": "train", "files": ["*"]}))
    for out in (project, data.parent):
        fails(capsys, train_args(bert_dir, data, out, "--overwrite"), "the training data")
    assert data.read_bytes() == data_before
    model = tmp_path / "models" / "bert"
    shutil.copytree(bert_dir, model)
    fails(capsys, train_args(model, data, model.parent, "--overwrite"), "contains the base model")
    assert (model / "model.safetensors").is_file()
    here = tmp_path / "work"
    here.mkdir()
    (here / MARKER).write_text(json.dumps({"kind": "train", "files": ["*"]}))
    (here / "todo.md").write_text("mine")
    monkeypatch.chdir(here)
    fails(capsys, train_args(bert_dir, data, here, "--overwrite"), "is the current directory")
    assert (here / "todo.md").read_text() == "mine"


def test_overwrite_replaces_a_run_only_once_the_new_one_is_set_up(
    capsys, tmp_path, bert_dir, data, monkeypatch
):
    out = tmp_path / "run"
    succeeds(capsys, train_args(bert_dir, data, out, steps=2))
    old = snapshot(out)
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    # the new run fails loading its data: the old run is all there
    fails(capsys, train_args(bert_dir, data, out, "--overwrite", "--text-column", "body"), "body")
    assert snapshot(out) == old
    # the new run's first write fails (a full disk): the old run is put back, nothing beside
    import lorakit.train.output_dir as output_dir

    real = output_dir.write_json

    def full(path, content):
        if Path(path).name == "config.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, content)

    monkeypatch.setattr(output_dir, "write_json", full)
    fails(capsys, train_args(bert_dir, data, out, "--overwrite"), "the disk is full")
    monkeypatch.setattr(output_dir, "write_json", real)
    assert snapshot(out) == old and sorted(os.listdir(tmp_path)) == ["data", "run"]
    # a real replacement: the new run's files only (a head-only run saves model/, no adapter/)
    succeeds(capsys, train_args(bert_dir, data, out, "--overwrite", "--method", "head", steps=2))
    assert json.loads((out / "config.json").read_text())["method"] == "head"
    assert (out / "model").is_dir() and not (out / "adapter").exists()
    assert json.loads((out / MARKER).read_text())["kind"] == "train"
    assert sorted(os.listdir(tmp_path)) == ["data", "run"] and not temps(tmp_path)


# -- a full disk ---------------------------------------------------------------------------


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(
    capsys, small_disk, bert_dir, data, monkeypatch
):
    root, mounted = small_disk
    out = root / "run"
    real, done = loop._checkpoint, []

    def then_full(run, optimizer, state):
        real(run, optimizer, state)
        done.append(state.step)
        if len(done) == 1:  # the disk fills up after the first checkpoint
            if mounted:
                fill(root)
            else:  # no tmpfs here: the next tensor write fails as a full disk does
                import lorakit.train.checkpoint as ckpt

                def full(tensors, path, *a, **k):
                    Path(path).write_bytes(b"\0" * 1000)  # half-written
                    raise OSError(errno.ENOSPC, "No space left on device", path)

                monkeypatch.setattr(ckpt, "save_file", full)

    monkeypatch.setattr(loop, "_checkpoint", then_full)
    err = fails(capsys, train_args(bert_dir, data, out), "the disk is full")
    assert "checkpoints/step-00000004" in err and "--resume to continue from step 2" in err
    assert done == [2] and _checkpoint_steps(out) == [2]
    assert not temps(root), temps(root)
    # space freed: the run resumes from that checkpoint and finishes
    monkeypatch.undo()
    (root / "filler").unlink(missing_ok=True)
    text = succeeds(capsys, train_args(bert_dir, data, out, "--resume"))
    assert "resumed from step 2" in text
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    assert _checkpoint_steps(out) == [4, 6] and not temps(root)


def _adapter_full(monkeypatch):
    import lorakit.adapters.save as save

    def full(tensors, path, *a, **k):
        Path(path).write_bytes(b"\0" * 1000)
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(save, "save_file", full)


def _metrics_read_only(monkeypatch):
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name.startswith(".metrics.json."):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)


def _plot_denied(monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, fname, *a, **k):
        Path(fname).write_bytes(b"\x89PNG")
        raise OSError(errno.EACCES, "Permission denied", str(fname))

    monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize(
    "inject, target, reason",
    [
        (_adapter_full, "adapter", "the disk is full"),
        (_metrics_read_only, "metrics.json", "the file system is read-only"),
        (_plot_denied, "loss_lr.png", "permission denied"),
    ],
)
def test_write_errors_after_training_are_one_line_and_resumable(
    capsys, tmp_path, bert_dir, data, monkeypatch, inject, target, reason
):
    out = tmp_path / "run"
    inject(monkeypatch)
    err = fails(capsys, train_args(bert_dir, data, out), reason)
    assert f"could not write {out / target}" in err and "continue from step 6" in err
    assert not (out / target).exists() and not temps(tmp_path), temps(tmp_path)
    assert _checkpoint_steps(out) == [4, 6]
    monkeypatch.undo()
    succeeds(capsys, train_args(bert_dir, data, out, "--resume"))
    assert (out / target).exists() and (out / "metrics.json").is_file()


# -- a kill mid-checkpoint -----------------------------------------------------------------

# Stops inside the step-4 checkpoint, its tensors written, the rest not: where a SIGKILL
# leaves a half-built temp directory behind.
DRIVER = """
import sys, time
import lorakit.train.checkpoint as ckpt
real = ckpt.save_file
def stalled(tensors, path, *a, **k):
    real(tensors, path, *a, **k)
    if ".step-00000004." in str(path):
        time.sleep(600)
ckpt.save_file = stalled
from lorakit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_a_checkpoint_write_leaves_a_resumable_run(capsys, tmp_path, bert_dir, data):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORAKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *train_args(bert_dir, data, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpts, deadline = out / "checkpoints", time.time() + 300
    try:
        while not list(ckpts.glob(".step-00000004.*.tmp/trainable.safetensors")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert temps(out) == [f"checkpoints/{p.name}" for p in ckpts.glob(".step-00000004.*.tmp")]
    assert len(temps(out)) == 1 and _checkpoint_steps(out) == [2]
    # a half-written file of a killed write, and a file of the user's with a similar name
    (out / ".train_log.csv.k1ll3d_x.tmp").write_text("step,epoch\n1,")
    (tmp_path / "keep.tmp").write_text("mine")
    text = succeeds(capsys, train_args(bert_dir, data, out, "--resume"))
    assert "resumed from step 2" in text
    assert not temps(tmp_path), temps(tmp_path)
    assert (tmp_path / "keep.tmp").read_text() == "mine"
    assert _checkpoint_steps(out) == [4, 6]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    assert len((out / "train_log.csv").read_text().splitlines()) == 7


# -- --resume on changed inputs ------------------------------------------------------------


def test_resume_refuses_changed_data(capsys, tmp_path, bert_dir, data):
    out = tmp_path / "run"
    succeeds(capsys, train_args(bert_dir, data, out, steps=2))
    original = data.read_bytes()
    edited = original.replace(b'item 7"', b'item 8"')  # same size, other content
    assert edited != original and len(edited) == len(original)
    data.write_bytes(edited)
    fails(
        capsys,
        train_args(bert_dir, data, out, "--resume", steps=2),
        "training data changed",
        "reviews.csv differs",
    )
    data.write_bytes(original + b"great stuff,pos\n")
    fails(capsys, train_args(bert_dir, data, out, "--resume", steps=2), "training data changed")
    # the same bytes again (a new mtime): the content is what counts
    data.write_bytes(original)
    assert "resumed from step 2" in succeeds(
        capsys, train_args(bert_dir, data, out, "--resume", steps=2)
    )


def test_resume_refuses_a_changed_base_model(capsys, tmp_path, bert_dir, data):
    model, out = tmp_path / "bert", tmp_path / "run"
    shutil.copytree(bert_dir, model)
    succeeds(capsys, train_args(model, data, out, steps=2))
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    fails(
        capsys,
        train_args(model, data, out, "--resume", steps=2),
        "base model changed",
        "model.safetensors differs",
    )
    shutil.copy(bert_dir / "model.safetensors", model / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    fails(
        capsys,
        train_args(model, data, out, "--resume", steps=2),
        "base model changed",
        "config.json differs",
    )
    shutil.copy(bert_dir / "config.json", model / "config.json")
    assert "resumed from step 2" in succeeds(
        capsys, train_args(model, data, out, "--resume", steps=2)
    )


# -- data a tokenizer or template cannot take ----------------------------------------------


def test_numeric_text_column_is_one_line(capsys, tmp_path, bert_dir):
    csv = tmp_path / "numbers.csv"
    csv.write_text(
        "review,mood\n" + "".join(f"{i * 7},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    )
    fails(capsys, train_args(bert_dir, csv, tmp_path / "run"), "column 'review' holds int values")
    assert not (tmp_path / "run").exists()


def test_a_chat_template_that_raises_is_one_line(capsys, tmp_path, llama_model_dir):
    model = tmp_path / "strict-llama"
    shutil.copytree(llama_model_dir, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    chats = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]
    rows = [turns] * 20 + [[{"role": "system", "content": "be brief"}, *turns]]
    chats.write_text(
        "".join(
            json.dumps({"messages": [*t, {"role": "user", "content": str(i)}, turns[1]]}) + "\n"
            for i, t in enumerate(rows)
        )
    )
    args = ["train", "--model", str(model), "--task", "causal-lm", "--data", str(chats)]
    err = fails(
        capsys,
        [*args, "--output", str(tmp_path / "run"), "--max-steps", "1"],
        "System role not supported",
    )
    assert "chat template rejected conversation" in err and "'system'" in err
    assert not (tmp_path / "run").exists()
