"""Opening an adapter directory's files: confined to the directory on request, size-capped
JSON, adapter_config.json (type-checked), the weights, labels.json."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lorakit.adapters.peft_format import (
    CONFIG_NAME,
    PICKLE_WEIGHTS_NAME,
    UNSUPPORTED_FIELDS,
    WEIGHTS_NAME,
)
from lorakit.adapters.validate import MAX_NAME_CHARS, check_config_fields, short
from lorakit.errors import AdapterFormatError, UnsupportedAdapterError

MAX_JSON_BYTES = 16 * 2**20  # adapter_config.json, labels.json
LABELS_NAME = "labels.json"


def confined_file(directory: str | Path, name: str) -> Path | None:
    """`directory/name` resolved, or None if there is no such entry. Refuses (AdapterFormatError)
    an entry that resolves outside the directory's own real path (a symlink out, or a dangling
    one) or that is not a regular file."""
    entry = Path(directory) / name
    if not os.path.lexists(entry):
        return None
    root = os.path.join(os.path.realpath(directory), "")
    real = os.path.realpath(entry)
    if not real.startswith(root):
        raise AdapterFormatError(
            f"{entry} resolves outside the adapter directory (a symlink out of it?) — copy the file into it"
        )
    try:
        regular = stat.S_ISREG(os.stat(real).st_mode)
    except OSError:
        regular = False
    if not regular:
        raise AdapterFormatError(f"{entry} is not a regular file — replace it with the file itself")
    return Path(real)


def adapter_file(directory: str | Path, name: str, confine: bool = False) -> Path | None:
    """The file to open for `name` in an adapter directory, or None if absent."""
    if confine:
        return confined_file(directory, name)
    file = Path(directory) / name
    return file if file.is_file() else None


def read_json(file: Path, shown: Path):
    """JSON content of `file` (size-capped); errors name `shown` (the path as given)."""
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise AdapterFormatError(f"{shown} could not be read ({exc.strerror})") from None
    if len(data) > MAX_JSON_BYTES:
        raise AdapterFormatError(
            f"{shown} is over {MAX_JSON_BYTES // 2**20} MiB — not an adapter's JSON file"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = exc if not isinstance(exc, RecursionError) else "nested too deeply"
        raise AdapterFormatError(
            f"{shown} is not valid JSON ({reason}) — re-save the adapter"
        ) from None


def read_labels(directory: str | Path, confine: bool = False) -> list[str] | None:
    """The label names in `directory/labels.json` (a non-empty list of distinct strings), or
    None if there is no such file."""
    shown = Path(directory) / LABELS_NAME
    file = adapter_file(directory, LABELS_NAME, confine)
    if file is None:
        return None
    labels = read_json(file, shown)
    if not isinstance(labels, list) or not labels:
        raise AdapterFormatError(
            f"{shown} must hold a non-empty JSON list of label names, got {short(labels)}"
        )
    for label in labels:
        if not isinstance(label, str) or not label or len(label) > MAX_NAME_CHARS:
            raise AdapterFormatError(
                f"{shown}: label {short(label)} is not a non-empty string of at most "
                f"{MAX_NAME_CHARS} characters"
            )
    if len(set(labels)) != len(labels):
        dup = next(x for i, x in enumerate(labels) if x in labels[:i])
        raise AdapterFormatError(
            f"{shown}: label {short(dup)} appears twice — labels must be distinct"
        )
    return labels


def read_config(path: str | Path, *, confine: bool = False) -> dict:
    """adapter_config.json of `path`, every field lorakit reads type-checked."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterFormatError(
            f"adapter directory {path} does not exist — pass a directory written by save_adapter or peft"
        )
    shown = path / CONFIG_NAME
    file = adapter_file(path, CONFIG_NAME, confine)
    if file is None:
        raise AdapterFormatError(
            f"{path} has no {CONFIG_NAME} — is it a peft/lorakit adapter directory?"
        )
    raw = read_json(file, shown)
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{shown} must hold a JSON object — re-save the adapter")
    check_config_fields(raw, shown)
    peft_type = raw.get("peft_type", "LORA")
    if peft_type.upper() != "LORA":
        raise UnsupportedAdapterError(
            f"{shown}: peft_type {short(peft_type)} is not supported — lorakit reads LORA adapters"
        )
    for name in UNSUPPORTED_FIELDS:
        if raw.get(name) not in (None, False, [], {}, ""):
            raise UnsupportedAdapterError(
                f"{shown}: {name}={short(raw[name])} is not supported by lorakit — retrain without it"
            )
    return raw


def read_weights(
    path: str | Path, allow_pickle: bool = False, *, confine: bool = False
) -> dict[str, torch.Tensor]:
    path = Path(path)
    file = adapter_file(path, WEIGHTS_NAME, confine)
    if file is not None:
        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterFormatError(
                f"{path / WEIGHTS_NAME} is truncated or corrupted ({exc}) — re-save or re-download it"
            ) from None
    pickled = adapter_file(path, PICKLE_WEIGHTS_NAME, confine)
    if pickled is not None:
        if not allow_pickle:
            raise AdapterFormatError(
                f"{path} holds only {PICKLE_WEIGHTS_NAME} (a pickle) — convert it to safetensors, "
                "or pass allow_pickle=True to read it with torch.load(weights_only=True)"
            )
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds here; all mean "unreadable file"
            raise AdapterFormatError(
                f"{path / PICKLE_WEIGHTS_NAME} could not be read safely ({exc})"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise AdapterFormatError(
                f"{path / PICKLE_WEIGHTS_NAME} does not hold a {{name: tensor}} dict — re-save it"
            )
        return state
    raise AdapterFormatError(f"{path} has no {WEIGHTS_NAME} — is it a complete adapter directory?")
