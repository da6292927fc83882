"""Using a model with an adapter: load, classify, generate (streaming), chat, merge."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Thread

import torch

from lorakit.adapters import load_adapter, read_config, read_labels
from lorakit.atomic import atomic_dir, check_replaceable
from lorakit.errors import ConfigError, OutputExistsError
from lorakit.lora import merge_and_unload
from lorakit.models.load import load_model

_TASK_OF = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal-lm"}


def adapter_task(
    adapter: str | Path, *, confine: bool = False
) -> tuple[str | None, list[str] | None]:
    """(task, label names) recorded with an adapter directory. A malformed adapter_config.json
    or labels.json raises AdapterFormatError; `confine`: both must be regular files inside the
    directory (no symlinks out of it)."""
    raw = read_config(Path(adapter), confine=confine)
    labels = read_labels(Path(adapter), confine=confine)
    return _TASK_OF.get(raw.get("task_type")), labels


def load_for_inference(model: str, adapter: str | Path | None = None, task: str | None = None):
    """(model, tokenizer, task, label names) with the adapter loaded and active."""
    labels = None
    if adapter is not None:
        adapter_kind, labels = adapter_task(adapter)
        if task and adapter_kind and task != adapter_kind:
            raise ConfigError(
                f"--task {task} but the adapter was trained for {adapter_kind} — drop --task"
            )
        task = task or adapter_kind
    task = task or "causal-lm"
    loaded, tokenizer = load_model(model, task, label_names=labels)
    if adapter is not None:
        load_adapter(loaded, adapter)
    loaded.eval()
    return loaded, tokenizer, task, labels or _config_labels(loaded)


def _config_labels(model) -> list[str] | None:
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    return [id2label[i] for i in sorted(id2label)] if id2label else None


@torch.no_grad()
def classify(
    model, tokenizer, texts: list[str], labels: list[str], batch_size: int = 32
) -> list[dict]:
    """[{label, probabilities: {name: p}}] per text."""
    results = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=512,
        )
        probs = model(**enc.to(next(model.parameters()).device)).logits.float().softmax(-1)
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {"label": labels[best], "probabilities": dict(zip(labels, row, strict=True))}
            )
    return results


def render_chat(tokenizer, messages: list[dict]) -> str:
    if not tokenizer.chat_template:
        raise ConfigError(
            "this model's tokenizer has no chat template — use `lorakit generate` with a plain prompt"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt. A chat template already writes the special tokens, so they are
    added only for models without one."""
    return tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def stream(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the completion of `prompt` piece by piece as tokens are generated."""
    from transformers import TextIteratorStreamer

    ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=next(model.parameters()).device)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    kwargs = dict(
        **enc,
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def chat_loop(
    model,
    tokenizer,
    read: Callable[[], str | None],
    write: Callable[[str], None],
    system: str | None = None,
    max_new_tokens: int = 256,
) -> list[dict]:
    """Interactive chat: read() a user line (None or '/exit' ends), stream the reply to write()."""
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        line = read()
        if line is None or line.strip() in ("/exit", "/quit"):
            return messages
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = ""
        for piece in stream(model, tokenizer, render_chat(tokenizer, messages), max_new_tokens):
            reply += piece
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": reply.strip()})


def merge_to_directory(
    model: str,
    adapter: str | Path,
    output: str | Path,
    overwrite: bool = False,
    dequantize: bool = False,
) -> Path:
    """Merge `adapter` into `model` and write a plain transformers directory (safetensors).

    The base is read from disk in full precision, so an adapter trained on a quantized base
    merges into W (W + s B A, the usual QLoRA practice). `dequantize`: merge into the base as
    training saw it instead — quantized the way the adapter's run did, then dequantized
    (W_q + s B A) — so the merged model reproduces the trained model's outputs.
    """
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # refused before the work
        if not overwrite:
            raise OutputExistsError(
                f"{out} already exists — pass --overwrite to replace it, or pick another --output"
            )
        check_replaceable(out, _merge_inputs(model, adapter))
    mode = trained_quantization(adapter) if dequantize else None
    loaded, tokenizer, _, _ = load_for_inference(model, adapter)
    if mode is not None:
        from lorakit.models.quantize import dequantize as to_plain
        from lorakit.models.quantize import quantize

        to_plain(quantize(loaded, mode))
    plain = merge_and_unload(loaded)
    # marked as lorakit's (listing its files), so a later --overwrite may replace it
    with atomic_dir(output, overwrite=True, kind="merge") as tmp:  # checked above
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(output)


def _merge_inputs(model: str, adapter: str | Path) -> dict:
    """What a merge's --overwrite must not delete: the adapter, the base, lorakit's cache."""
    import contextlib

    from lorakit.errors import LorakitError
    from lorakit.models.load import resolve_model
    from lorakit.models.paths import cache_dir

    paths = {"the adapter": Path(adapter), "lorakit's cache": cache_dir()}
    with contextlib.suppress(LorakitError):  # a bad name is reported by the load that follows
        paths["the base model"] = resolve_model(model).path
    return paths


def trained_quantization(adapter: str | Path) -> str:
    """The `quantize` mode an adapter was trained with (its lorakit_train_config.json)."""
    path = Path(adapter) / "lorakit_train_config.json"
    mode = json.loads(path.read_text()).get("quantize", "none") if path.is_file() else "none"
    if mode == "none":
        raise ConfigError(
            f"--dequantize: {adapter} was not trained on a quantized base (no quantize in "
            f"{path.name}) — drop --dequantize"
        )
    return mode
