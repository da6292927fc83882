"""`--format peft`: a clean adapter directory, checked against what vLLM can serve.

vLLM reads peft directories (`--lora-modules name=DIR`) but not every peft feature: it
refuses DoRA, trained biases and modules_to_save, pads every adapter to `--max-lora-rank`
(one of a fixed set of values), and scales every module by the config's one alpha / r
(alpha / sqrt(r) with rsLoRA), ignoring rank_pattern and alpha_pattern. So the copy folds
each module's own scaling into its B wherever it differs from that global one — the
product s B A, and so the outputs, are unchanged — and drops alpha_pattern. Only peft's two
files are written (plus labels.json for a classifier), never lorakit's training records.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from lorakit.adapters import read_adapter
from lorakit.adapters.files import adapter_file
from lorakit.adapters.peft_format import CONFIG_NAME, WEIGHTS_NAME, lora_key
from lorakit.atomic import atomic_dir, refuse_existing
from lorakit.export.gguf_arch import UnsupportedExportError

# vLLM's --max-lora-rank accepts these values only
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_refusals(read) -> list[str]:
    """What vLLM refuses to load in this adapter (empty: it loads)."""
    why = []
    if read.config.use_dora or any("magnitude" in p for p in read.parts.values()):
        why.append("DoRA (use_dora)")
    if read.bias != "none" or any("bias" in p for p in read.parts.values()):
        why.append(f"trained biases (bias={read.bias})")
    if read.saved:
        why.append(f"modules_to_save ({', '.join(sorted(read.saved))})")
    if max(read.ranks.values(), default=0) > VLLM_RANKS[-1]:
        why.append(f"rank {max(read.ranks.values())} > {VLLM_RANKS[-1]}")
    return why


def max_lora_rank(read) -> int:
    """The smallest --max-lora-rank vLLM accepts for this adapter."""
    top = max(read.ranks.values(), default=1)
    return next(r for r in VLLM_RANKS if r >= top)


def write_peft_copy(
    adapter: str, output: str, overwrite: bool, model: str, say: Callable[[str], None] = print
) -> Path:
    read = read_adapter(adapter)
    why = vllm_refusals(read)
    if why:
        raise UnsupportedExportError(
            f"--format peft: vLLM cannot serve {'; '.join(why)} of {adapter} — "
            "export the merged model with --format transformers instead"
        )
    out = Path(output)
    refuse_existing(out, overwrite, {"the adapter": Path(adapter)})
    config = dict(read.raw)
    config["alpha_pattern"], config["base_model_name_or_path"] = {}, model
    tensors, folded = fold_scaling(read, config)
    labels = adapter_file(adapter, "labels.json")
    with atomic_dir(out, overwrite=True, kind="export-peft") as tmp:  # checked above
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp / WEIGHTS_NAME))
        if labels is not None:
            (tmp / "labels.json").write_bytes(labels.read_bytes())
    note = f" (scaling folded into B for {folded} modules)" if folded else ""
    say(
        f"peft adapter written to {out}{note}; for vLLM: vllm serve {model} --enable-lora "
        f"--max-lora-rank {max_lora_rank(read)} --lora-modules {read.stem}={out.resolve()}"
    )
    return out


def fold_scaling(read, config: dict) -> tuple[dict, int]:
    """(tensors, modules changed): every module scaled by the config's one alpha / r.

    B takes the ratio of the module's own scaling to that one; alpha_pattern then gives peft
    (which honours rank_pattern) the alpha that makes its per-module scaling that one too, so
    peft and vLLM (which ignores both patterns) compute the same s B A as the original."""
    one = config_scaling(config)
    tensors, folded = dict(read.tensors), 0
    for module, r in read.ranks.items():
        factor = read.scaling(module) / one
        if not math.isclose(factor, 1.0, rel_tol=1e-6):
            key = lora_key(module, "B", "linear")
            tensors[key] = (tensors[key] * factor).contiguous()
            folded += 1
        alpha = one * (math.sqrt(r) if config.get("use_rslora") else r)
        if not math.isclose(alpha, config.get("lora_alpha", 8), rel_tol=1e-9):
            config["alpha_pattern"][re.escape(module)] = alpha
    return tensors, folded


def config_scaling(config: dict) -> float:
    """The one scaling vLLM applies: lora_alpha / r (or / sqrt(r) with use_rslora)."""
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)
