"""Checks for adapter files from untrusted sources (e.g. the tenants of a server).

Every refusal is an AdapterFormatError whose one line names the file and the field or tensor:
config fields of the wrong type, regexes that do not compile or could backtrack for too long
(Python's `re` has no timeout, so each pattern's matching cost is bounded before use), tensors
that are not finite floats, and key names that are not module paths.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from lorakit.adapters.peft_format import KNOWN_TASK_TYPES
from lorakit.errors import AdapterFormatError

try:  # Python 3.11+
    from re import _parser as _sre
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre

MAX_NAME_CHARS = 256  # a module path, list entry or string field; matching inputs are this long
MAX_PATTERN_CHARS = 256
MAX_ENTRIES = 100_000  # entries of a list or dict field
MAX_MATCH_COST = 2 * 10**7  # backtracking paths of one match (≈ 50 ms at worst); see pattern_cost
REGEX_RULE = (
    f"Python's re has no timeout, so a pattern must have at most {MAX_PATTERN_CHARS} characters, "
    "no backreferences, no repeated group that itself repeats or alternates (like (x+)+, (x*)*, "
    "(x|y)*) and few open-ended repetitions (about 3 like .* or + in a pattern, 2 in a "
    "rank_pattern/alpha_pattern key)"
)
BIAS_MODES = ("none", "all", "lora_only")


def short(value, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: safe to put in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- regexes ---------------------------------------------------------------------------------


class _Refused(Exception):
    pass


def pattern_cost(parsed) -> int:
    """An upper bound on the paths a backtracking matcher can take from one start position,
    on names of at most MAX_NAME_CHARS characters: a repetition of a single-path body adds one
    path per repeat count, an alternation the sum of its branches (their maximum when they
    start with distinct literal characters), and a sequence multiplies."""
    total = 1
    for op, arg in parsed:
        name = op.name
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            raise _Refused("backreferences and conditional groups are refused")
        if name == "BRANCH":
            costs = [pattern_cost(branch) for branch in arg[1]]
            # branches that start with distinct literal characters: at most one can go on
            factor = max(costs) if _disjoint_starts(arg[1]) else sum(costs)
        elif name == "SUBPATTERN":
            factor = pattern_cost(arg[-1])
        elif name == "ATOMIC_GROUP":
            factor = pattern_cost(arg)
        elif name in ("ASSERT", "ASSERT_NOT"):
            factor = 1 + pattern_cost(arg[1])
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, body = arg
            inner = pattern_cost(body)
            hi = min(hi, MAX_NAME_CHARS)
            lo = min(lo, hi)
            if inner == 1:
                factor = hi - lo + 1
            elif arg[1] == _sre.MAXREPEAT:
                raise _Refused("a repeated group repeats or alternates inside (nested quantifier)")
            else:  # bounded repeats of a body with choices: sum of inner**k
                factor, power = 0, inner**lo
                for _ in range(lo, hi + 1):
                    factor += power
                    power *= inner
                    if factor > MAX_MATCH_COST:
                        break
        else:  # LITERAL, NOT_LITERAL, ANY, IN, AT, CATEGORY: one path
            factor = 1
        total *= factor
        if total > MAX_MATCH_COST:
            return MAX_MATCH_COST + 1
    return total


def _first_chars(branch) -> set[int] | None:
    """The characters a branch can start with, when it starts with literals (else None)."""
    if not len(branch):
        return None
    op, arg = branch[0]
    if op.name == "LITERAL":
        return {arg}
    if op.name == "IN" and all(o.name == "LITERAL" for o, _ in arg):
        return {a for _, a in arg}
    return None


def _disjoint_starts(branches) -> bool:
    seen: set[int] = set()
    for branch in branches:
        first = _first_chars(branch)
        if first is None or first & seen:
            return False
        seen |= first
    return True


def _nested_group_repeat(pattern: str) -> bool:
    """Lexically: a group repeated more than once (*, +, {m,}, {m,n>1}) that holds a variable
    quantifier or a |. Checked on the text as written, since the parser folds (x|y) into a class."""
    holds = [False]  # per open group: does it hold a quantifier or an alternation
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
        elif c == "[":  # skip the class: ] first (or after ^) is a literal
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
        elif c == "(":
            holds.append(False)
            i += 2 if pattern[i + 1 : i + 2] == "?" else 1  # (?:, (?P<n>, (?= ...
        elif c == ")":
            inner = holds.pop() if len(holds) > 1 else False
            i += 1
            after = pattern[i : i + 1]
            brace = _brace(pattern, i) if after == "{" else None
            many = after in ("*", "+") or (brace is not None and (brace[1] is None or brace[1] > 1))
            if inner and many:
                return True
            holds[-1] = holds[-1] or inner
        else:
            brace = _brace(pattern, i) if c == "{" else None
            if c in "|*+?" or (brace is not None and (brace[1] is None or brace[1] > brace[0])):
                holds[-1] = True
            i += 1
    return False


def _brace(pattern: str, i: int) -> tuple[int, int | None] | None:
    """At a '{': (min, max or None) if it is a repetition, else None."""
    m = re.match(r"\{(\d*)(,?)(\d*)\}", pattern[i:])
    if m is None or not (m.group(1) or m.group(3)):
        return None
    lo = int(m.group(1) or 0)
    if not m.group(2):
        return lo, lo
    return lo, int(m.group(3)) if m.group(3) else None


def check_pattern(pattern: str, where: str, wrapped: bool = False) -> int:
    """Compile `pattern` and bound its matching cost; return the cost. `wrapped`: a rank/alpha
    pattern key, matched as `(.*\\.)?(key)$` (peft's rule)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise AdapterFormatError(
            f"{where}: pattern of {len(pattern)} characters is refused — {REGEX_RULE}"
        )
    text = rf"(.*\.)?({pattern})$" if wrapped else pattern
    try:
        re.compile(pattern)
        re.compile(text)
        parsed = _sre.parse(text)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise AdapterFormatError(
            f"{where}: {short(pattern)} is not a valid regular expression ({exc})"
        ) from None
    try:
        if _nested_group_repeat(pattern):
            raise _Refused("a repeated group repeats or alternates inside (nested quantifier)")
        cost = pattern_cost(parsed)
    except _Refused as exc:
        raise AdapterFormatError(
            f"{where}: {short(pattern)} is refused: {exc} — {REGEX_RULE}"
        ) from None
    if cost > MAX_MATCH_COST:
        raise AdapterFormatError(
            f"{where}: {short(pattern)} is refused: too many open-ended repetitions or "
            f"alternatives — {REGEX_RULE}"
        )
    return cost


# -- config fields ------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_name(value, where: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise AdapterFormatError(
            f"{where} must be a non-empty string of at most {MAX_NAME_CHARS} characters, "
            f"got {short(value)}"
        )


def _check_names(value, where: str, regex_ok: bool) -> None:
    """null, a list of module names, or (regex_ok) one regex string."""
    if value is None:
        return
    if isinstance(value, str):
        if not regex_ok:
            raise AdapterFormatError(f"{where} must be a list of module names, got {short(value)}")
        if value not in ("", "all-linear"):
            check_pattern(value, where)
        return
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        what = "a list of names or a regex string" if regex_ok else "a list of module names"
        raise AdapterFormatError(f"{where} must be null or {what}, got {short(value)}")
    for item in value:
        _check_name(item, f"{where} entry")


def _check_patterns(raw: dict, file: Path) -> None:
    total = 0
    for field, positive_int in (("rank_pattern", True), ("alpha_pattern", False)):
        value = raw.get(field)
        if value is None:
            continue
        if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
            raise AdapterFormatError(
                f"{file}: {field} must be null or an object {{regex: number}}, got {short(value)}"
            )
        for key, v in value.items():
            ok = (
                isinstance(v, int) and not isinstance(v, bool) and v > 0
                if positive_int
                else _is_number(v)
            )
            if not ok:
                want = "a positive integer" if positive_int else "a finite number"
                raise AdapterFormatError(
                    f"{file}: {field}[{short(key, 320)}] must be {want}, got {short(v)}"
                )
            total += check_pattern(key, f"{file}: {field} key", wrapped=True)
    if total > MAX_MATCH_COST:  # every module name tries each key in turn
        raise AdapterFormatError(
            f"{file}: rank_pattern and alpha_pattern keys together are too costly to match — {REGEX_RULE}"
        )


def check_config_fields(raw: dict, file: Path) -> None:
    """Type-check every adapter_config.json field lorakit reads (peft's names)."""

    def bad(field: str, want: str):
        return AdapterFormatError(f"{file}: {field} must be {want}, got {short(raw[field])}")

    if "peft_type" in raw and not isinstance(raw["peft_type"], str):
        raise bad("peft_type", 'a string ("LORA")')
    if "r" in raw and not (
        isinstance(raw["r"], int) and not isinstance(raw["r"], bool) and raw["r"] > 0
    ):
        raise bad("r", "a positive integer")
    if "lora_alpha" in raw and not _is_number(raw["lora_alpha"]):
        raise bad("lora_alpha", "a finite number")
    dropout = raw.get("lora_dropout")
    if dropout is not None and not (_is_number(dropout) and 0 <= dropout < 1):
        raise bad("lora_dropout", "a number in [0, 1)")
    for field in ("use_rslora", "use_dora", "fan_in_fan_out", "inference_mode"):
        if raw.get(field) is not None and not isinstance(raw[field], bool):
            raise bad(field, "true or false")
    if raw.get("bias") is not None and raw["bias"] not in BIAS_MODES:
        raise bad("bias", f"one of {', '.join(BIAS_MODES)}")
    if raw.get("task_type") is not None and raw["task_type"] not in KNOWN_TASK_TYPES:
        raise bad("task_type", f"null or one of {', '.join(KNOWN_TASK_TYPES)}")
    init = raw.get("init_lora_weights")
    if (
        init is not None
        and not isinstance(init, bool)
        and not (isinstance(init, str) and len(init) <= 64)
    ):
        raise bad("init_lora_weights", "true, false or an init name")
    base = raw.get("base_model_name_or_path")
    if base is not None and not (
        isinstance(base, str) and len(base) <= 4096 and base.isprintable()
    ):
        raise bad("base_model_name_or_path", "null or a printable string")
    _check_names(raw.get("target_modules"), f"{file}: target_modules", regex_ok=True)
    _check_names(raw.get("exclude_modules"), f"{file}: exclude_modules", regex_ok=True)
    _check_names(raw.get("modules_to_save"), f"{file}: modules_to_save", regex_ok=False)
    _check_patterns(raw, file)


# -- tensors --------------------------------------------------------------------------------


def check_module_path(module: str, key: str, file: Path) -> None:
    parts = module.split(".")
    if len(module) > MAX_NAME_CHARS or not all(
        p and not any(c.isspace() for c in p) for p in parts
    ):
        raise AdapterFormatError(
            f"{file}: tensor {short(key, 320)} does not name a module path (dot-separated names, "
            f"at most {MAX_NAME_CHARS} characters)"
        )


def check_tensor(tensor, key: str, file: Path) -> None:
    """A float tensor with only finite values."""
    if not isinstance(tensor, torch.Tensor):
        raise AdapterFormatError(
            f"{file}: {short(key, 320)} is not a tensor ({type(tensor).__name__})"
        )
    if not tensor.is_floating_point():
        raise AdapterFormatError(
            f"{file}: tensor {short(key, 320)} has dtype {tensor.dtype} — adapter weights must be floats"
        )
    plain = (
        tensor
        if tensor.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        else tensor.float()
    )
    if not bool(torch.isfinite(plain).all()):
        raise AdapterFormatError(
            f"{file}: tensor {short(key, 320)} holds NaN or infinite values — the adapter's training diverged; "
            "retrain it or use an earlier checkpoint"
        )
