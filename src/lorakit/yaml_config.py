"""A YAML file plus command-line flags → one validated TrainConfig (flags win)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lorakit.config import TrainConfig
from lorakit.errors import ConfigError

_REGEX_CHARS = re.compile(r"[\\^$*+?()\[\]{}|]")


def parse_targets(value: str) -> list[str] | str:
    """'all-linear' and regexes stay strings; 'q_proj,v_proj' becomes a list of names."""
    value = value.strip()
    if value == "all-linear" or _REGEX_CHARS.search(value):
        return value
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigError(
            "--targets is empty — give module names (q_proj,v_proj), a regex or all-linear"
        )
    return names


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found — check the path")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML ({problem}) — fix the file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must be a mapping of TrainConfig fields (key: value)")
    return loaded


def resolve_config(cls, config_file: Path | None, flags: dict, parsers: dict | None = None):
    """A YAML file of `cls` fields plus command-line flags (flags win) → a validated `cls`.

    Flags left at None are not given; `--resume` / `--overwrite` count only when set.
    `parsers` turn a flag's string into the field's value (e.g. "1,4,16" → [1, 4, 16]).
    """
    parsers = {"targets": parse_targets, **(parsers or {})}
    values = read_yaml(Path(config_file)) if config_file else {}
    if isinstance(values.get("targets"), str):
        values["targets"] = parse_targets(values["targets"])
    for key, value in flags.items():
        if value is None or (key in ("resume", "overwrite") and value is False):
            continue
        values[key] = parsers[key](value) if key in parsers and isinstance(value, str) else value
    try:
        return cls(**values)
    except ConfigError as exc:
        where = f" in {config_file}" if config_file else ""
        raise ConfigError(f"{exc}{where}") from None


def resolve_train_config(config_file: Path | None, flags: dict) -> TrainConfig:
    return resolve_config(TrainConfig, config_file, flags)
