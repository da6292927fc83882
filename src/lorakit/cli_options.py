"""Command-line options generated from a config's pydantic fields, so each is declared once.

Field `max_steps` becomes `--max-steps`: typed from its annotation (bools as `--x/--no-x`,
Literal as choices, lists and `{name: value}` dicts as repeatable options), its help the
field's description, its shown default the field's default. Every generated option defaults
to None, "not given" (on-only flags such as `--overwrite` too), so only the flags on the
command line override the YAML file. FLAGS spells the exceptions to the naming.

A field marked `json_schema_extra={"argument": True}` is a positional argument instead
(classify's TEXTS..., generate's PROMPT). A field without a default is required: checked by
click (`Missing option '--adapter'`) on a command without a YAML file, by pydantic otherwise,
since the file may hold it.

The YAML file (`[CONFIG_FILE]`) and `--print-config` come with the run commands, whose
configs are long and worth keeping in a file (train, compare, rank-probe, serve). The one-shot
commands (eval, classify, generate, chat, merge, inspect, demo) take `config_file=False`:
flags only. Their input fits on one line, and three of them already use the positional
slot, which an optional `[CONFIG_FILE]` beside `TEXTS...` would make ambiguous; so all seven
follow one rule rather than some taking a file.
"""

from __future__ import annotations

import functools
import inspect
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lorakit.errors import ConfigError
from lorakit.yaml_config import resolve_config

# Flags spelled otherwise than their field (kept as they were): declaration, metavar.
FLAGS = {
    "resume": ("--resume", None),
    "overwrite": ("--overwrite", None),
    "release_memory": ("--release-memory/--keep-memory", None),
    "include_full": ("--full/--no-full", None),
    "include_head": ("--head/--no-head", None),
    "isolate": ("--isolate/--in-process", None),
    "validate_run": ("--validate/--no-validate", None),
    "adapters": ("--adapter", "NAME=DIR"),
    "classifier_adapters": ("--classifier-adapter", "NAME=DIR"),
    "adapter_dirs": ("--adapter-dir", None),
    "chat_template": ("--chat-template/--raw", None),
    "as_json": ("--json", None),
    "compare_base": ("--compare-base", None),
    "dequantize": ("--dequantize", None),
    "quick": ("--quick", None),
}
# Fields whose flag takes one string that the resolver's parsers split ("1,4,16", "q_proj,v_proj").
ONE_STRING = {"targets", "ranks"}
_SCALARS = (str, int, float, bool, Path)
_PRINT_HELP = "Print the resolved config and exit."


def config_command(cls: type[BaseModel], resolve=resolve_config, *, config_file: bool = True):
    """Turn `command(config)` into a CLI command: `[CONFIG_FILE]` (YAML of `cls` fields), one
    parameter per field, `--print-config`; it runs with `resolve(cls, config_file, flags)`, the
    flags given on the command line overriding the file. Fields no flag can carry (dicts of
    lists or of anything) stay YAML-only. `config_file=False`: flags (and arguments) only."""
    fields = cls.model_fields
    options = {n: opt for n, f in fields.items() if (opt := _option(n, f, not config_file))}
    params = [_param(name, kind, info) for name, (kind, info) in options.items()]
    if config_file:
        if any(_is_argument(f) for f in fields.values()):  # which positional would be the file?
            raise TypeError(f"{cls.__name__} has positional arguments: use config_file=False")
        file_help = f"YAML file of {cls.__name__} fields; flags override it."
        params = [
            _param("config_file", Path | None, typer.Argument(None, help=file_help)),
            *params,
            _param("print_config", bool, typer.Option(False, "--print-config", help=_PRINT_HELP)),
        ]

    def decorate(command):
        @functools.wraps(command)
        def run(config_file: Path | None = None, print_config: bool = False, **values: Any):
            flags = {name: _value(options[name][1], value) for name, value in values.items()}
            config = resolve(cls, config_file, flags)
            if print_config:
                import yaml

                print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
                return
            command(config)

        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


def _param(name: str, kind: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)


def _decl(name: str) -> tuple[str, str | None]:
    return FLAGS.get(name, ("--" + name.replace("_", "-"), None))


def _is_argument(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("argument"))


def _option(name: str, field: FieldInfo, check_required: bool) -> tuple[Any, Any] | None:
    """(annotation, typer.Option or typer.Argument) of a field, or None where no flag can carry
    it. `check_required`: a field without a default is required on the command line."""
    kind = _strip_none(field.annotation)
    decl, metavar = _decl(name)
    origin, args = get_origin(kind), get_args(kind)
    if name in ONE_STRING:
        kind = str
    elif kind is bool and name not in FLAGS:
        decl = f"{decl}/--no-{decl[2:]}"
    elif origin is list and args[0] in _SCALARS:
        kind = list[args[0]]
    elif origin is dict and args[1] in _SCALARS:
        kind, metavar = list[str], metavar or "NAME=VALUE"
    elif origin is Literal:  # one choice per line: a narrow type column leaves the help room
        metavar = "\n".join(map(str, args))
    elif kind not in _SCALARS:
        return None
    required = check_required and field.is_required()
    shown = not field.is_required() and _shown(field.get_default(call_default_factory=True), decl)
    if _is_argument(field):  # `TEXTS...` for a list: no "(repeatable)"
        info = typer.Argument(
            ... if required else None, help=field.description, metavar=metavar, show_default=shown
        )
    else:
        repeatable = get_origin(kind) is list
        info = typer.Option(
            ... if required else None,
            decl,
            help=f"{field.description} (repeatable)" if repeatable else field.description,
            metavar=metavar,
            show_default=shown,
        )
    return (kind if required else kind | None), info


def _strip_none(kind: Any) -> Any:
    if get_origin(kind) in (Union, types.UnionType):
        rest = [a for a in get_args(kind) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return kind


def _shown(default: Any, decl: str) -> str | bool:
    if default is None or default == [] or default == {}:
        return False
    if isinstance(default, bool):  # a flag is off unless given: show only the ones on
        return decl.split("/")[0][2:] if default else False
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


def _value(info: Any, value: Any) -> Any:
    if isinstance(value, (list, tuple)) and not value:
        return None  # a repeatable option not given
    if isinstance(value, (list, tuple)) and "=" in (info.metavar or ""):
        return _pairs(value, info.param_decls[0], info.metavar)
    return list(value) if isinstance(value, tuple) else value


def _pairs(values: list[str], flag: str, metavar: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{flag} takes {metavar}, got {value!r} — write it as {metavar}")
        pairs[name] = rest
    return pairs
