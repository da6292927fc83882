"""An Ollama Modelfile for exported GGUF files: FROM, ADAPTER, TEMPLATE, PARAMETER stop.

Ollama's TEMPLATE is a Go template, the model's chat template a Jinja one; no general
translation exists. Most chat templates, though, wrap each message in a fixed text per role
(ChatML's `<|im_start|>user\\n ... <|im_end|>\\n`), maybe with a default system turn when the
conversation has none, and end with a fixed generation prompt. Those pieces are measured by
rendering the Jinja template on marker messages, checked by re-rendering conversations of
every shape from them, and written as a Go template over `.Messages`. A template that is not
of that kind is refused with one line: write its TEMPLATE by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.atomic import write_text
from lorakit.errors import OutputExistsError
from lorakit.export.gguf_arch import UnsupportedExportError

HEADER = "# Modelfile written by lorakit export"
_M = "\u2063LORAKIT-CONTENT\u2063"  # a marker no real template prints
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turns:
    """A chat template as fixed texts: role -> (prefix, suffix), default system, prompt."""

    wrap: dict[str, tuple[str, str]]
    default_system: str  # printed when the first message is not a system one
    generation: str  # what add_generation_prompt appends

    def render(self, messages: list[dict], generation_prompt: bool = True) -> str:
        first = messages[0]["role"] if messages else None
        text = self.default_system if first != "system" else ""
        for m in messages:
            prefix, suffix = self.wrap[m["role"]]
            text += prefix + m["content"] + suffix
        return text + (self.generation if generation_prompt else "")


def chat_turns(tokenizer) -> Turns:
    """Measure a tokenizer's chat template as Turns (UnsupportedExportError if it is not one)."""
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        raise UnsupportedExportError("--ollama: the model has no chat template to translate")

    def render(messages, generation_prompt=False):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def msg(role, content=_M):
        return {"role": role, "content": content}

    try:
        wrap = {"system": _split(render([msg("system")]), "system")}
        head = render([msg("system", "S")])
        user = _split(_after(render([msg("system", "S"), msg("user")]), head), "user")
        pair = render([msg("system", "S"), msg("user", "U")])
        wrap["user"] = user
        wrap["assistant"] = _split(_after(render([*_su(), msg("assistant")]), pair), "assistant")
        default = render([msg("user")])
        default = default[: len(default) - len(user[0] + _M + user[1])]
        generation = _after(render(_su(), True), pair)
    except Exception as exc:  # a template may raise on any of these shapes
        raise UnsupportedExportError(
            f"--ollama: the chat template cannot be written as a Modelfile TEMPLATE ({exc}) — "
            "write TEMPLATE by hand"
        ) from None
    turns = Turns(wrap, default, generation)
    _check(turns, render)
    return turns


def _su():
    return [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


def _split(text: str, role: str) -> tuple[str, str]:
    if text.count(_M) != 1:
        raise ValueError(f"the {role} message is not printed once")
    prefix, suffix = text.split(_M)
    return prefix, suffix


def _after(text: str, head: str) -> str:
    if not text.startswith(head):
        raise ValueError("earlier messages render differently once more follow")
    return text[len(head) :]


def _check(turns: Turns, render) -> None:
    """The measured pieces must reproduce the template on conversations of every shape."""
    cases = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c\nd"},
        ],
    ]
    for messages in cases:
        for gen in (False, True):
            if render(messages, gen) != turns.render(messages, gen):
                raise UnsupportedExportError(
                    "--ollama: the chat template is not a fixed text per message (it renders "
                    "differently by position) — write the Modelfile TEMPLATE by hand"
                )


def go_template(turns: Turns) -> str:
    """The Turns as an Ollama (Go text/template) TEMPLATE over .Messages."""
    lit = _go_literal
    out = ""
    if turns.default_system:
        out += (
            '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
            f"{lit(turns.default_system)}{{{{ end }}}}"
        )
    out += "{{ range .Messages }}"
    for i, role in enumerate(_ROLES):
        prefix, suffix = turns.wrap[role]
        out += f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        out += f"{lit(prefix)}{{{{ .Content }}}}{lit(suffix)}"
    out += "{{ end }}{{ end }}" + lit(turns.generation)
    return out


def _go_literal(text: str) -> str:
    # text outside {{ }} is printed as is; only a literal "{{" must be written as an action
    return text.replace("{{", '{{ "{{" }}')


def stop_words(tokenizer, turns: Turns) -> list[str]:
    """Texts that end a reply: the eos token and the special token closing an assistant turn."""
    stops = []
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        stops.append(eos)
    suffix = turns.wrap["assistant"][1].strip()
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    if suffix and suffix in specials and suffix not in stops:
        stops.append(suffix)
    return stops


def modelfile_text(model_gguf: Path, adapter_gguf: Path | None, tokenizer) -> str:
    turns = chat_turns(tokenizer)
    template = go_template(turns)
    if '"""' in template:
        raise UnsupportedExportError('--ollama: the chat template contains """ — write it by hand')
    lines = [HEADER, f"FROM {model_gguf.resolve()}"]
    if adapter_gguf is not None:
        lines.append(f"ADAPTER {adapter_gguf.resolve()}")
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stop_words(tokenizer, turns)]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_modelfile(
    directory: Path, model_gguf: Path, adapter_gguf: Path | None, tokenizer, overwrite: bool
) -> Path:
    """Write `directory`/Modelfile; an existing one is replaced only if lorakit wrote it."""
    path = check_modelfile(directory, overwrite)
    write_text(path, modelfile_text(model_gguf, adapter_gguf, tokenizer))
    return path


def check_modelfile(directory: str | Path, overwrite: bool) -> Path:
    """`directory`/Modelfile, refused if it exists unless --overwrite and lorakit wrote it."""
    path = Path(directory) / "Modelfile"
    if path.exists() or path.is_symlink():
        mine = path.is_file() and not path.is_symlink()
        mine = mine and path.read_text(errors="replace").startswith(HEADER)
        if not overwrite or not mine:
            raise OutputExistsError(
                f"{path} already exists — pass --overwrite to replace one lorakit wrote, or "
                "pick another --ollama directory"
            )
    return path
