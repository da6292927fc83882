"""The same care in every command that writes: atomic writes and full disks, lorakit's temp
names, the --overwrite rule for merge / compare / rank-probe, the run fingerprint."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from lorakit.atomic import (
    MARKER,
    WriteError,
    atomic_dir,
    clean_temps,
    save_stream,
    write_text,
)
from lorakit.compare.sweep import open_output
from lorakit.errors import OutputExistsError
from lorakit.train import fingerprint
from reliability.training_helpers import (  # noqa: F401 (fixtures)
    fails,
    fill,
    one_thread_fixture,
    small_disk_fixture,
    snapshot,
    succeeds,
    temps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _full(root: Path, mounted: bool, monkeypatch) -> None:
    """Make writes under root fail as on a full disk: really (tmpfs), else by injection."""
    if mounted:
        fill(root)
        return
    import lorakit.atomic as atomic

    class Full:  # a file that takes 1 KiB, then fails as a full disk does
        def __init__(self, path, mode):
            self.f, self.written = open(path, mode), 0  # noqa: SIM115 (closed in __exit__)

        def write(self, data):
            self.written += len(data)
            if self.written > 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def flush(self):
            self.f.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(atomic, "open", Full, raising=False)  # save_stream's file
    real = Path.write_text

    def write_text_full(self, text, *a, **k):
        if len(text) > 1024:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text_full)


def test_writes_on_a_full_disk_are_write_errors_and_leave_nothing(small_disk, monkeypatch):
    root, mounted = small_disk
    write_text(root / "notes.md", "old")
    (root / "ckpt").mkdir()
    _full(root, mounted, monkeypatch)
    with pytest.raises(WriteError, match=r"notes\.md: the disk is full — free disk space"):
        write_text(root / "notes.md", "x" * (5 << 20))
    # torch.save hides the OS error ("unexpected pos"); save_stream raises it as itself
    big = {"w": torch.zeros(2 << 20)}
    with pytest.raises(WriteError, match="step-1: the disk is full"):
        with atomic_dir(root / "ckpt" / "step-1") as tmp:
            save_stream(tmp / "optimizer.pt", lambda f: torch.save(big, f))
    monkeypatch.undo()
    assert (root / "notes.md").read_text() == "old"
    assert not temps(root) and os.listdir(root / "ckpt") == []


def test_clean_temps_removes_lorakit_temp_names_only(tmp_path):
    stale_dir, stale = (
        ".step-00000004.a1b2c3d4.tmp",
        [".train_log.csv.zz_9x8y7.tmp", ".adapter.old-4242"],
    )
    keep = ["notes.tmp", ".hidden", ".a.tmp", ".x.TOOLONG12.tmp", "x.abcd1234.tmp"]
    (tmp_path / stale_dir).mkdir()
    (tmp_path / stale_dir / "trainable.safetensors").write_text("half")
    (tmp_path / "step-00000002").mkdir()
    for name in stale + keep:
        (tmp_path / name).write_text("x")
    assert clean_temps(tmp_path) == sorted([stale_dir, *stale])
    assert sorted(os.listdir(tmp_path)) == sorted([*keep, "step-00000002"])


def test_fingerprint_reads_large_files_in_samples_and_sees_their_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "BLOCK", 16)
    monkeypatch.setattr(fingerprint, "WHOLE_UP_TO", 64)
    path = tmp_path / "big.csv"
    path.write_bytes(bytes(range(256)) * 4)  # 1024 bytes: 17 samples of 16
    first = fingerprint.file_fingerprint(path)
    assert first["sampled"] and first["size"] == 1024
    for offset in (0, 1023, 504):  # first block, last block, a block between (504 = 8 * 63)
        data = bytearray(path.read_bytes())
        data[offset] ^= 1
        path.write_bytes(bytes(data))
        assert fingerprint.file_fingerprint(path)["sha256"] != first["sha256"], offset
        data[offset] ^= 1
        path.write_bytes(bytes(data))
        assert fingerprint.file_fingerprint(path) == first
    small = tmp_path / "small.csv"
    small.write_bytes(b"a" * 64)
    assert not fingerprint.file_fingerprint(small)["sampled"]


def test_a_data_directory_is_fingerprinted_by_its_split_files(tmp_path, sentiment_csv):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train.csv").write_bytes(sentiment_csv.read_bytes())
    (d / "README.md").write_text("not data")
    before = fingerprint._files(fingerprint.data_files(str(d)))
    assert sorted(before) == ["train.csv"]
    (d / "README.md").write_text("still not data")
    assert fingerprint._files(fingerprint.data_files(str(d))) == before
    (d / "test.csv").write_bytes(sentiment_csv.read_bytes())
    after = fingerprint._files(fingerprint.data_files(str(d)))
    assert fingerprint._difference(before, after) == "test.csv added"


# -- merge ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, bert_dir, sentiment_csv):
    from lorakit.config import TrainConfig
    from lorakit.train import train

    out = tmp_path_factory.mktemp("merge") / "run"
    config = TrainConfig(
        model=str(bert_dir),
        data=str(sentiment_csv),
        text_column="review",
        label_column="mood",
        output=str(out),
        max_steps=2,
        max_eval_samples=8,
    )
    train(config, log=lambda *a: None, progress=False)
    return out


def test_merge_overwrites_only_its_own_output(capsys, tmp_path, bert_dir, adapter_run):
    merge = ["merge", "--model", str(bert_dir), "--adapter", str(adapter_run / "adapter")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.safetensors").write_bytes(b"precious")
    fails(capsys, [*merge, "--output", str(mine), "--overwrite"], "not a lorakit output")
    assert snapshot(mine) == {"weights.safetensors": b"precious"}
    fails(capsys, [*merge, "--output", str(adapter_run), "--overwrite"], "contains the adapter")
    assert (adapter_run / "adapter" / "adapter_model.safetensors").is_file()
    out = tmp_path / "merged"
    succeeds(capsys, [*merge, "--output", str(out)])
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "merge" and "model.safetensors" in marker["files"]
    fails(capsys, [*merge, "--output", str(out)], "already exists", "--overwrite")
    (out / "model.safetensors").write_bytes(b"stale")
    succeeds(capsys, [*merge, "--output", str(out), "--overwrite"])
    assert (out / "model.safetensors").read_bytes() != b"stale" and not temps(tmp_path)
    (out / "my-notes.txt").write_text("mine")
    fails(
        capsys, [*merge, "--output", str(out), "--overwrite"], "did not write there (my-notes.txt)"
    )
    assert (out / "my-notes.txt").read_text() == "mine"


def test_an_os_error_outside_lorakits_writers_is_one_line(capsys, monkeypatch, tmp_path):
    import lorakit.infer.merge as infer

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(infer, "merge_to_directory", full)
    args = ["merge", "--adapter", "a", "--output", str(tmp_path / "o")]
    fails(capsys, args, f"could not access {tmp_path / 'x'}: the disk is full")


# -- compare / rank-probe outputs ----------------------------------------------------------


def test_sweep_outputs_obey_the_overwrite_rule(tmp_path, sentiment_csv):
    settings = {"ranks": [1]}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my results")
    with pytest.raises(OutputExistsError, match="not a lorakit output"):
        open_output(mine, "c.json", settings, overwrite=True)
    assert snapshot(mine) == {"results.csv": b"my results"}
    protected = {"the training data": sentiment_csv}
    holder = sentiment_csv.parent
    with pytest.raises(OutputExistsError, match="contains the training data"):
        open_output(holder, "c.json", settings, overwrite=True, protected=protected)
    assert sentiment_csv.is_file()
    sweep = tmp_path / "sweep"
    open_output(sweep, "c.json", settings, overwrite=False)
    assert json.loads((sweep / MARKER).read_text())["kind"] == "compare"
    (sweep / "runs").mkdir()
    (sweep / "mine.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"did not write there \(mine\.txt\)"):
        open_output(sweep, "c.json", {"ranks": [2]}, overwrite=True)
    assert (sweep / "mine.txt").read_text() == "mine"
    (sweep / "mine.txt").unlink()
    (sweep / ".results.csv.abcd1234.tmp").write_text("killed mid-write")
    open_output(sweep, "c.json", {"ranks": [2]}, overwrite=True)  # its own files only: fine
    assert json.loads((sweep / "c.json").read_text()) == {"ranks": [2]} and not temps(sweep)


def test_demo_overwrite_never_deletes_a_folder_it_did_not_make(tmp_path):
    from lorakit.demo import run_demo

    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a lorakit output"):
        run_demo(str(out), overwrite=True, quick=True, say=lambda *a, **k: None)
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]
