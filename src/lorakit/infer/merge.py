"""`lorakit merge`: an adapter merged into its base, written as a plain transformers directory."""

from __future__ import annotations

import json
from pathlib import Path

from lorakit.atomic import atomic_dir, refuse_existing
from lorakit.errors import ConfigError
from lorakit.infer.load import load_for_inference
from lorakit.lora import merge_and_unload


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
    refuse_existing(out, overwrite, lambda: merge_inputs(model, adapter))  # before the work
    plain, tokenizer = merged_model(model, adapter, dequantize)
    # marked as lorakit's (listing its files), so a later --overwrite may replace it
    with atomic_dir(output, overwrite=True, kind="merge") as tmp:  # checked above
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(output)


def merged_model(model: str, adapter: str | Path | None, dequantize: bool = False):
    """(plain model with the adapter merged in, tokenizer); the base alone without adapter."""
    mode = trained_quantization(adapter) if dequantize else None
    loaded, tokenizer, _, _ = load_for_inference(model, adapter)
    if adapter is None:
        return loaded, tokenizer
    if mode is not None:
        from lorakit.models.quantize import dequantize as to_plain
        from lorakit.models.quantize import quantize

        to_plain(quantize(loaded, mode))
    return merge_and_unload(loaded), tokenizer


def merge_inputs(model: str, adapter: str | Path) -> dict:
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
