"""Writes that are complete or absent, and the rules for replacing an output directory.

- Every file is written to a temp file beside its target (`.NAME.XXXXXXXX.tmp`), fsynced and
  renamed over it; a directory is built as `.NAME.XXXXXXXX.tmp/` and renamed into place (an
  old one is first renamed to `.NAME.old-PID`). A kill leaves only those names behind, and
  `clean_temps` removes them from a run directory when it is next used.
- A full disk, exceeded quota, missing permission or read-only file system while writing is
  a one-line `WriteError` (exit 2), with the temp file removed.
- `--overwrite` replaces only a directory lorakit marked as its output (a `.lorakit-run` file
  listing the names lorakit writes there), holding nothing else, and never one that is or
  contains the data, the model, the current directory or the home directory.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from lorakit.errors import LorakitError, OutputExistsError

MARKER = ".lorakit-run"
# lorakit's own temp names: mkstemp/mkdtemp's 8 random characters, or an old output set aside
_TEMP = re.compile(r"^\..+\.(?:[a-z0-9_]{8}\.tmp|old-\d+)$")
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}
_FIXES = {
    errno.ENOSPC: "free disk space (or write to another disk)",
    errno.EDQUOT: "free disk space (or write to another disk)",
    errno.EFBIG: "write to another file system",
    errno.EACCES: "check the permissions there (or write elsewhere)",
    errno.EPERM: "check the permissions there (or write elsewhere)",
    errno.EROFS: "write to a writable location",
}
# Writers in Rust (safetensors) report the OS error in their message only.
_OS_ERROR_TEXT = re.compile(r"os error (\d+)|(no space left on device)", re.IGNORECASE)


class WriteError(LorakitError):
    """A file could not be written: disk full, quota, permission, read-only file system."""

    def __init__(self, path: str | Path, code: int, fix: str | None = None, verb: str = "write"):
        self.path, self.code = Path(path), code
        self.fix = fix or f"{_FIXES[code]}, then run the command again"
        super().__init__(f"could not {verb} {path}: {_REASONS[code]} — {self.fix}")


def disk_errno(exc: BaseException | None) -> int | None:
    """The errno of a disk-full / permission / read-only error in `exc` or its causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in _REASONS:
                return exc.errno
        else:
            match = _OS_ERROR_TEXT.search(str(exc))
            if match:
                code = int(match.group(1)) if match.group(1) else errno.ENOSPC
                if code in _REASONS:
                    return code
        exc = exc.__cause__ or exc.__context__
    return None


def as_write_error(
    exc: BaseException, path: str | Path | None = None, verb: str = "write"
) -> WriteError | None:
    """`exc` as a WriteError on `path` (default: the error's own file) when it is a disk
    error, else None."""
    if isinstance(exc, WriteError):
        return exc
    code = disk_errno(exc)
    if code is None:
        return None
    where = path if path is not None else getattr(exc, "filename", None) or "a file"
    return WriteError(where, code, verb=verb)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A disk error (full, quota, permission, read-only) inside becomes a WriteError on `path`."""
    try:
        yield
    except Exception as exc:
        err = as_write_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from exc


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def public_mode(path: str | Path, directory: bool = False) -> None:
    """Give a temp file / dir the mode a plain open() / mkdir() would have: mkstemp and
    mkdtemp make them private (0600 / 0700), which would keep an exported model or adapter
    from the runtime user reading it (a vLLM or Ollama service)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_file(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) on a temp file next to `path`, then fsync and rename it over `path`."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            public_mode(tmp)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: dict) -> None:
    """`data` as indented JSON (values JSON cannot hold written as their str)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


class _Recording:
    """A file wrapper that keeps the OSError a writer replaces by its own (torch.save)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_stream(path: str | Path, save: Callable[[object], None]) -> None:
    """save(file) into `path` (e.g. torch.save); the OS error behind a writer's failure is
    raised as itself ("unexpected pos 704 vs 598" says nothing about a full disk)."""
    with open(path, "wb") as f:
        recording = _Recording(f)
        try:
            save(recording)
        except Exception as exc:
            if recording.error is not None:
                raise recording.error from exc
            raise


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, overwrite: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` as a whole.

    An existing `path` is kept unless `overwrite`; on any error nothing at `path` changes.
    `kind`: mark the directory as a lorakit output listing what it holds (see `mark`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists — pass overwrite=True / --overwrite, or pick another path"
        )
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        try:
            public_mode(tmp, directory=True)
            yield tmp
            if kind is not None:
                mark(tmp, kind, sorted(p.name for p in tmp.iterdir()))
            for f in tmp.iterdir():
                if f.is_file():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            if path.exists():
                _remove(old)
                os.replace(path, old)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not path.exists():  # set aside, not replaced: put it back
                os.replace(old, path)
            raise
        with contextlib.suppress(OSError):
            _remove(old)
        _fsync_dir(path.parent)


# -- what --overwrite may replace ----------------------------------------------------------


def mark(directory: Path, kind: str, files: Sequence[str]) -> None:
    """Mark `directory` as lorakit's output of `kind`; `files`: the names (glob patterns)
    lorakit writes at its top level, the only ones an --overwrite may find there."""
    content = {"kind": kind, "files": list(files)}
    write_text(Path(directory) / MARKER, json.dumps(content, indent=2) + "\n")


def read_marker(directory: Path) -> dict | None:
    try:
        content = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(content, dict) and isinstance(content.get("files"), list)
    return content if ok else None


def is_temp(name: str) -> bool:
    """A name lorakit's writers use for temp files / directories."""
    return bool(_TEMP.match(name))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_temps(directory: str | Path) -> list[str]:
    """Remove what a killed lorakit writer left in `directory` (its own temp names only)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.iterdir() if is_temp(p.name))
    for p in stale:
        with contextlib.suppress(OSError):
            _remove(p)
    return [p.name for p in stale]


def _inside(path: Path, other: Path) -> bool:
    return path == other or path in other.parents


def refuse_existing(
    path: str | Path,
    overwrite: bool,
    protected: Mapping[str, str | Path | None] | Callable[[], Mapping] = (),
    alternative: str | None = "pick another --output",
) -> None:
    """The rule every writing command applies before its work: an existing, non-empty `path`
    is an OutputExistsError unless --overwrite, and then only if check_replaceable allows it.
    `protected` may be a function, called only when an output is about to be replaced."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not overwrite:
        tail = f", or {alternative}" if alternative else ""
        raise OutputExistsError(f"{path} already exists — pass --overwrite to replace it{tail}")
    check_replaceable(path, protected() if callable(protected) else protected)


def check_replaceable(path: str | Path, protected: Mapping[str, str | Path | None] = ()) -> None:
    """OutputExistsError unless --overwrite may delete `path`: a directory lorakit marked as
    its output, holding only the names its marker lists, that is not (a parent of) any
    `protected` path ({what: path}), the current directory or the home directory."""
    path = Path(path)
    resolved = path.expanduser().resolve()
    guarded = {
        **dict(protected),
        "the current directory": Path.cwd(),
        "your home directory": Path.home(),
    }
    for what, other in guarded.items():
        if other is None:
            continue
        other = Path(other).expanduser().resolve()
        if _inside(resolved, other):
            verb = "is" if resolved == other else "contains"
            raise OutputExistsError(
                f"--overwrite refused: {path} {verb} {what} ({other}) — pick another output "
                "directory"
            )
    if not path.is_dir():
        raise OutputExistsError(
            f"--overwrite refused: {path} is a file, not a lorakit output directory — delete or "
            "move it yourself, or pick another output"
        )
    marker = read_marker(path)
    if marker is None:
        raise OutputExistsError(
            f"--overwrite refused: {path} is not a lorakit output (no {MARKER} file), so it may "
            "hold your files — move them away yourself, or pick another output"
        )
    allowed = [MARKER, *marker["files"]]
    foreign = sorted(
        p.name
        for p in path.iterdir()
        if not is_temp(p.name) and not any(fnmatch.fnmatchcase(p.name, a) for a in allowed)
    )
    if foreign:
        raise OutputExistsError(
            f"--overwrite refused: {path} holds files lorakit did not write there "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) — move them out, "
            "or pick another output"
        )


def _clean_asides(path: Path) -> None:
    """Old outputs a killed `replace_dir` set aside (marked, of a process no longer alive)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.old-(\d+)$")
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        match = pattern.match(p.name)
        if match and read_marker(p) is not None and not _alive(int(match.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier call: not in use now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def replace_dir(
    path: str | Path, kind: str, files: Sequence[str], setup: Callable[[Path], None]
) -> Path:
    """Make `path` a fresh marked output and call setup(path) to write its first files.

    An existing output (check it with `check_replaceable` first) is renamed aside and
    deleted only once setup succeeded; on any error the new directory is removed and the
    old one put back, untouched.
    """
    path = Path(path)
    with writing(path):
        _clean_asides(path)
        aside = None
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            aside = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, aside)
        try:
            path.mkdir(parents=True, exist_ok=True)
            mark(path, kind, files)
            setup(path)
        except BaseException:
            for p in path.iterdir() if path.is_dir() else []:
                with contextlib.suppress(OSError):
                    _remove(p)  # only what was just written: the old output is aside
            if aside is not None:
                with contextlib.suppress(OSError):
                    path.rmdir()
                os.replace(aside, path)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        _fsync_dir(path.parent)
    return path
