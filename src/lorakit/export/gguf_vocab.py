"""The tokenizer as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

Two sources. A base that came from a GGUF file (the packaged SmolLM2) has its tokenizer
fields copied verbatim: llama.cpp then tokenizes exactly as it does for that file. Otherwise
the transformers tokenizer is written: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) with its
vocabulary, merges, token types, special ids and chat template, and llama.cpp's name for its
pre-tokenizer (`tokenizer.ggml.pre`), recognised from the tokenizer's own pre-tokenizer
definition — a tokenizer whose splitting llama.cpp has no name for is refused, because
llama.cpp would silently split text another way.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from lorakit.export.gguf_arch import UnsupportedExportError

# Split regexes of tokenizer.json pre-tokenizers, by llama.cpp pre-tokenizer name. The
# distinguishing pieces are enough: Llama 3 groups digits by three, Qwen2 one by one.
_SPLIT_MARKS = (("llama-bpe", r"\p{N}{1,3}"), ("qwen2", r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"))


def copy_tokenizer_fields(writer: gguf.GGUFWriter, source: Path) -> None:
    """Every `tokenizer.*` field of a GGUF file, written unchanged."""
    reader = gguf.GGUFReader(str(source))
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)


def write_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """A transformers fast tokenizer (byte-level BPE) as GGUF tokenizer metadata."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedExportError(
            "GGUF export needs a fast (tokenizer.json) tokenizer — this model has a slow one"
        )
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _byte_level(spec):
        raise UnsupportedExportError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM); this "
            f"one is {model.get('type')!r}{' with byte fallback' if model.get('byte_fallback') else ''}"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    tokens, types = _tokens(tokenizer, spec, vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id)):
        if getattr(tokenizer, f"{kind}_token_id", None) is not None:
            add(getattr(tokenizer, f"{kind}_token_id"))
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]  # what the tokenizer adds
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bool(ids) and bos is not None and ids[0] == bos)
    writer.add_add_eos_token(bool(ids) and eos is not None and ids[-1] == eos and len(ids) > 1)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _byte_level(spec: dict) -> bool:
    return '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (how text is split before BPE)."""
    parts = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # digits one by one, then GPT-2's split
    if kinds and kinds[0] == "Split":
        regex = (parts[0].get("pattern") or {}).get("Regex", "")
        for name, mark in _SPLIT_MARKS:
            if mark in regex:
                return name
    raise UnsupportedExportError(
        f"GGUF export: llama.cpp has no pre-tokenizer matching this tokenizer's ({kinds}) — "
        "its text would be split differently; export --format transformers instead"
    )


def _tokens(tokenizer, spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order, padded to the model's embedding rows, with their GGUF types."""
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special", False)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types
