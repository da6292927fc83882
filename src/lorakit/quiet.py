"""Keep the libraries' progress bars and load reports out of the command-line output.

The CLI promises one line per error and its own progress display; datasets' "Generating
train split" bars and transformers' "Loading weights" bars would interleave with both.
"""

from __future__ import annotations

import contextlib
import logging
import os


def quiet_libraries() -> None:
    # transformers' GGUF loader uses a bare tqdm; tqdm reads TQDM_* at import, so set it first
    os.environ.setdefault("TQDM_DISABLE", "1")
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def silenced(logger_name: str):
    """Mute a logger and its children for a block (a library logging an error that we turn
    into our own one-line error). Children inherit the level, unlike `disabled`."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)
