"""Writing one GGUF file: tensor encodings, the lorakit mark, and the complete-or-absent rule.

A GGUF lorakit writes carries `lorakit.export` (its format version), so `--overwrite` can
tell a file it wrote from one it did not: it replaces only its own (see atomic.py's rule).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch

from lorakit.atomic import write_file
from lorakit.errors import OutputExistsError

MARK_KEY = "lorakit.export"
MARK_VERSION = "1"
DTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def encode(tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """`tensor` as GGUF data of `dtype`. Vectors (norms, biases) stay f32, as llama.cpp's
    converter keeps them; a q8_0 matrix whose rows are not whole 32-blocks falls back to f16."""
    data = tensor.detach().to(torch.float32).cpu().numpy()
    kind = DTYPES[dtype][0]
    if data.ndim < 2 or kind == gguf.GGMLQuantizationType.F32:
        return data, gguf.GGMLQuantizationType.F32
    if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        kind = gguf.GGMLQuantizationType.F16
    if kind == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), kind
    return gguf.quants.quantize(data, kind), kind


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless --overwrite and it is a GGUF lorakit wrote."""
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise OutputExistsError(
            f"{path} already exists — pass --overwrite to replace it, or pick another --output"
        )
    if path.is_symlink() or not path.is_file() or not written_by_lorakit(path):
        raise OutputExistsError(
            f"{path} exists and is not a GGUF file lorakit exported — --overwrite replaces "
            "only those; move it or pick another --output"
        )


def written_by_lorakit(path: Path) -> bool:
    try:
        return MARK_KEY in gguf.GGUFReader(str(path)).fields
    except (OSError, ValueError, KeyError, IndexError):  # not a GGUF at all
        return False


def write_gguf(path: Path, arch: str, fill: Callable[[gguf.GGUFWriter], None]) -> Path:
    """Write a GGUF for `arch` whose metadata and tensors `fill(writer)` adds, atomically."""

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_string(MARK_KEY, MARK_VERSION)
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_file(path, write)
    return path
