"""Convert a GGUF file once into a plain HF model directory, then reuse it.

Loading a GGUF with transformers dequantizes every tensor (~25 s for SmolLM2-135M on 2 cores)
and marks the model as quantized: its config carries a GGUF `quantization_config`, so the
Trainer refuses to train it and `save_pretrained` balks. The converted directory holds the
dequantized fp32 weights (safetensors), the config without `quantization_config` and the
tokenizer (with its chat template); it loads in ~1 s and gives identical logits.

The directory is built under a temporary name and renamed into place, so a half-written
conversion is never used: a cache directory is complete or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lorakit.errors import ModelNotFoundError
from lorakit.models.paths import cache_dir

log = logging.getLogger(__name__)

# Bump when the layout of a converted directory changes: old cache entries are then ignored.
FORMAT_VERSION = "1"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
_SAMPLE = 1 << 20  # bytes hashed from each end of the file
_STALE_TMP_S = 24 * 3600  # a temp dir this old belongs to a conversion that died


def cache_key(gguf_path: str | Path) -> str:
    """`<stem>-<12 hex>`: a content hash of the file's size, first and last MiB.

    Content, not mtime: reinstalling the same package must hit the cache, while another file
    with the same name (a different quantization) must not. Hashing both ends catches
    files whose metadata header is identical but whose weights differ.
    """
    path = Path(gguf_path)
    size = path.stat().st_size
    h = hashlib.sha256(f"lorakit-gguf-v{FORMAT_VERSION}:{size}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        f.seek(max(size - _SAMPLE, 0))
        h.update(f.read(_SAMPLE))
    return f"{path.stem}-{h.hexdigest()[:12]}"


def is_complete(directory: Path) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in REQUIRED_FILES)


def cached_gguf_dir(gguf_path: str | Path) -> Path:
    """The converted HF directory for `gguf_path` under `cache_dir()/models/`, converting once."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelNotFoundError(
            f"GGUF file {gguf_path} not found — check the path, or use the alias smollm2-135m"
        )
    root = cache_dir() / "models"
    target = root / cache_key(gguf_path)
    if is_complete(target):
        return target
    if target.exists():  # only someone editing the cache by hand gets here; rebuild it
        log.warning("incomplete model cache %s: converting again", target)
        shutil.rmtree(target)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    log.info("converting %s once into %s (about 30 s)", gguf_path.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        model, tokenizer = load_gguf(gguf_path)
        save_plain(model, tokenizer, tmp)
        del model
        _fsync_files(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails if another process published first
        except OSError:
            if not is_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the other conversion is just as good
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_gguf(gguf_path: str | Path):
    """(model, tokenizer) straight from a GGUF file: slow, and the model is marked quantized."""
    import transformers  # heavy; only needed on the slow path

    gguf_path = Path(gguf_path)
    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, dtype=torch.float32, **kwargs
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(
            f"could not read GGUF file {gguf_path}: {exc} — check that it is a complete GGUF "
            "file of an architecture transformers supports (llama, qwen2, mistral, ...)"
        ) from exc
    return model, tokenizer


def save_plain(model: torch.nn.Module, tokenizer, out_dir: str | Path) -> None:
    """Write `model` and `tokenizer` as a plain (unquantized) HF directory."""
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) drops the tied lm_head alias instead of failing on shared memory.
    save_model(model, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized fp32 now
    config.architectures = [type(model).__name__]  # GGUF configs lack it; vLLM & co. need it
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # also writes chat_template.jinja


def _fsync_files(directory: Path) -> None:
    for f in directory.iterdir():
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
