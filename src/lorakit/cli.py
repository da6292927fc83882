"""The `lorakit` command. Each command is a few lines calling one library function.

Errors a user can cause (LorakitError) print one line `error: ...` and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from lorakit.errors import LorakitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="LoRA for any PyTorch model: train, measure, merge, swap and serve adapters (PEFT format).",
)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


@app.command()
def inspect(
    adapter: Path = typer.Argument(..., help="An adapter directory (lorakit or peft)."),
) -> None:
    """Validate an adapter directory's files and print a summary as JSON."""
    from lorakit.adapters.inspect import summarize

    print(json.dumps(summarize(adapter), indent=2))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except LorakitError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # click's usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        show = getattr(exc, "show", None)
        if show:
            show()
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
