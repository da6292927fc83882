"""How the `lorakit` command ends: user errors as one line `error: ...` and exit code 2.

LorakitError (anything a user can cause) prints its message; click's usage errors (unknown
flag, bad choice) print one line too, pointing at --help; a full disk or a permission error
in a write outside lorakit's own writers becomes a WriteError line. `--debug` re-raises
instead, for the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from lorakit.errors import LorakitError


def run_reporting(run: Callable[[], object], debug: Callable[[], bool]) -> int:
    """Call `run` (the click app) and return the process exit code."""
    try:
        run()
    except LorakitError as exc:
        if debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # click's exits carry their own exit code
        code = getattr(exc, "exit_code", None)
        if _usage_error(exc):
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx else "lorakit"
            print(f"error: {exc.format_message()} — see `{where} --help`", file=sys.stderr)
            return code
        if code is None:
            from lorakit.atomic import as_write_error

            disk = None if debug() else as_write_error(exc, verb="access")
            if disk is None:
                raise
            print(f"error: {disk}", file=sys.stderr)
            return disk.exit_code
        show = getattr(exc, "show", None)
        if show:
            show()
        return code
    return 0


def _usage_error(exc: Exception) -> bool:
    # typer ships its own copy of click, so match the class by name, not by identity
    return any(c.__name__ == "UsageError" for c in type(exc).__mro__)
