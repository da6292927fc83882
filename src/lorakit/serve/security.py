"""The API key and the adapter-path allowlist."""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path

from lorakit.adapters.peft_format import CONFIG_NAME
from lorakit.errors import ConfigError
from lorakit.serve.config import ADAPTER_NAME
from lorakit.serve.errors import ApiError

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
_ADAPTER_NAME = re.compile(ADAPTER_NAME)


def api_key(variable: str) -> str | None:
    """The key in `variable`; None when it is unset. Set but blank is refused: an empty key
    would otherwise switch authentication off without a word."""
    value = os.environ.get(variable)
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(
            f"{variable} is set but empty — set it to a key, or unset it to serve without one"
        )
    return value.strip()


def _bad_path(path: str) -> str | None:
    if not path:
        return "is empty"
    if len(path) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    if "\x00" in path:
        return "contains a NUL character"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode"
    return None


def check_key(expected: str | None, authorization: str | None) -> None:
    """401 unless `Authorization: Bearer <expected>` (compared in constant time)."""
    if expected is None:
        return
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not (authorization or "").startswith("Bearer ") or not hmac.compare_digest(
        given.encode(), expected.encode()
    ):
        raise ApiError(
            401, "missing or wrong API key — send 'Authorization: Bearer <key>'", "invalid_api_key"
        )


def runtime_changes_allowed(roots: list[Path]) -> None:
    """Loading and unloading at runtime are both off unless the server has --adapter-dir."""
    if not roots:
        raise ApiError(
            403,
            "runtime adapter loading and unloading are off — start the server with --adapter-dir DIR",
            "adapter_loading_disabled",
        )


def allowed_path(path: str, roots: list[Path]) -> Path:
    """The adapter directory `path` resolved, if it lies inside one of `roots` (symlinks and
    '..' resolved first, so neither can leave them). The files inside are confined to it
    when they are read (read_adapter(confine=True))."""
    runtime_changes_allowed(roots)
    bad = _bad_path(path)
    if bad:
        raise ApiError(400, f"lora_path {bad}", "invalid_path", "lora_path")
    try:
        resolved = Path(path).resolve()  # no "~": the server's home is not the client's
    except (OSError, RuntimeError, ValueError) as exc:  # a loop of links, a too-long name
        raise ApiError(
            400, f"lora_path cannot be resolved ({type(exc).__name__})", "invalid_path", "lora_path"
        ) from None
    for root in roots:
        if resolved == root or root in resolved.parents:
            if not _is_dir(resolved):
                raise ApiError(
                    400, f"{path} is not an adapter directory", "adapter_not_found", "lora_path"
                )
            return resolved
    raise ApiError(
        403,
        f"{path} is outside the allowed adapter directories",
        "adapter_path_not_allowed",
        "lora_path",
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def adapter_in_dirs(name: str, roots: list[Path]) -> Path | None:
    """The adapter directory `name` names inside one of `roots`, for loading on first use:
    a plain directory name (letters, digits, . _ -; no separator, no leading dot), whose
    resolved path (links followed) is still inside that root and holds an adapter config.
    None when there is none (the request's 404)."""
    if not _ADAPTER_NAME.fullmatch(name):
        return None
    for root in roots:
        try:
            resolved = (root / name).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if root in resolved.parents and _is_dir(resolved) and (resolved / CONFIG_NAME).is_file():
            return resolved
    return None


def available_adapters(roots: list[Path], limit: int = 10_000) -> list[str]:
    """Names `adapter_in_dirs` would load, at most `limit` (for /v1/models?available=true)."""
    names: list[str] = []
    for root in roots:
        try:
            children = sorted(p.name for p in root.iterdir())
        except OSError:
            continue
        for name in children:
            if len(names) >= limit:
                return names
            if name not in names and adapter_in_dirs(name, [root]) is not None:
                names.append(name)
    return names
