"""Errors a user can cause. Each message reads `what happened — how to fix it`.

The CLI prints `error: <message>` on one line and exits 2 for any `LorakitError`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LorakitError(Exception):
    """Base class of every error caused by user input (paths, configs, data, requests)."""

    exit_code = 2


class ConfigError(LorakitError, ValueError):
    """A config value or combination of values is invalid (r <= 0, unknown key, ...)."""


class TargetNotFoundError(LorakitError):
    """`target_modules` matched no module of the model."""


class AdapterFormatError(LorakitError):
    """An adapter directory is missing files, or holds malformed / corrupted ones."""


class UnsupportedAdapterError(AdapterFormatError):
    """An adapter of a kind lorakit does not read (peft_type other than LORA, ...)."""


class AdapterMismatchError(LorakitError):
    """An adapter does not fit the model (trained on another base: names or shapes differ)."""


class AdapterNotFoundError(LorakitError, KeyError):
    """An adapter name that is not loaded on the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelNotFoundError(LorakitError):
    """A model name that is neither an alias, a local directory, a .gguf file nor cached."""


class DataError(LorakitError):
    """Training / evaluation data is missing, unreadable or unusable."""


class OutputExistsError(LorakitError):
    """An output would be overwritten without `--overwrite`."""
