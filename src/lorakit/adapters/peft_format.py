"""peft's on-disk format: adapter_config.json fields and adapter_model.safetensors key names.

Keys are `base_model.model.<module path>.<suffix>` with suffixes
  lora_A.weight / lora_B.weight            Linear and Conv1D, A [r, in], B [out, r]
  lora_embedding_A / lora_embedding_B      Embedding, A [r, vocab], B [dim, r]
  lora_magnitude_vector                    DoRA magnitude [out]
  base_layer.bias / bias                   trained biases (bias="lora_only" / "all")
  <param>                                  modules_to_save (the module's own parameter names)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorakit.config import LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."

LORA_SUFFIXES = {
    "lora_A.weight": "A",
    "lora_B.weight": "B",
    "lora_embedding_A": "A",
    "lora_embedding_B": "B",
    "lora_magnitude_vector": "magnitude",
    "lora_magnitude_vector.weight": "magnitude",  # peft < 0.12 wrote this
}

# peft fields that select features lorakit does not implement; a non-empty value is refused.
UNSUPPORTED_FIELDS = (
    "layers_to_transform",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "lora_bias",
    "use_qalora",
    "alora_invocation_tokens",
)

KNOWN_TASK_TYPES = (
    "SEQ_CLS",
    "SEQ_2_SEQ_LM",
    "CAUSAL_LM",
    "TOKEN_CLS",
    "QUESTION_ANS",
    "FEATURE_EXTRACTION",
)


@dataclass(frozen=True)
class Key:
    module: str  # module path inside the model
    # "A", "B", "magnitude", "bias", "base_weight", "saved" (modules_to_save) or
    # "original" (peft's copy of the unchanged base module, which the model already has)
    part: str
    param: str = ""  # for "saved": the parameter path inside the saved module


def lora_key(module: str, part: str, kind: str) -> str:
    if part == "magnitude":
        return f"{PREFIX}{module}.lora_magnitude_vector"
    if kind == "embedding":
        return f"{PREFIX}{module}.lora_embedding_{part}"
    return f"{PREFIX}{module}.lora_{part}.weight"


def parse_key(key: str, saved_modules: list[str]) -> Key | None:
    """Map a file key to what it holds, or None if it is not one of peft's LoRA keys."""
    name = key.removeprefix(PREFIX)
    for suffix, part in LORA_SUFFIXES.items():
        if name.endswith("." + suffix):
            return Key(name[: -len(suffix) - 1], part)
    if name.endswith(".base_layer.bias"):
        return Key(name.removesuffix(".base_layer.bias"), "bias")
    if name.endswith(".base_layer.weight"):
        return Key(name.removesuffix(".base_layer.weight"), "base_weight")
    for saved in saved_modules:
        # peft writes a saved module's parameters plainly, except with bias="all", where the
        # wrapper's insides show: `<m>.modules_to_save.bias` and `<m>.original_module.bias`.
        match = re.match(
            rf"^((?:.*\.)?{re.escape(saved)})\.(?:(modules_to_save|original_module)\.)?(.+)$", name
        )
        if match:
            module, wrapper, param = match.groups()
            return Key(module, "original" if wrapper == "original_module" else "saved", param)
    if name.endswith(".bias"):
        return Key(name.removesuffix(".bias"), "bias")
    return None


def to_peft_config(config: LoraConfig, target_modules, fan_in_fan_out: bool) -> dict:
    """adapter_config.json content, with peft's field names (also read by vLLM)."""
    init = {"gaussian": "gaussian", "kaiming": True, "pissa": True}[config.init]
    return {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": config.base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": target_modules,
        "exclude_modules": config.exclude_modules,
        "modules_to_save": config.modules_to_save,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "init_lora_weights": init,
        "rank_pattern": config.rank_pattern or {},
        "alpha_pattern": config.alpha_pattern or {},
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def from_peft_config(raw: dict) -> dict:
    """LoraConfig fields from adapter_config.json content (peft's or ours)."""
    target = raw.get("target_modules")
    if isinstance(target, str | list | tuple | set):
        target = target if isinstance(target, str) else sorted(target)
    alpha = raw.get("lora_alpha", raw.get("r", 8))
    init = raw.get("init_lora_weights", True)
    return {
        "r": raw.get("r", 8),
        "alpha": alpha,
        "dropout": raw.get("lora_dropout", 0.0) or 0.0,
        "target_modules": target if target else "all-linear",
        "exclude_modules": raw.get("exclude_modules") or None,
        "modules_to_save": list(raw["modules_to_save"]) if raw.get("modules_to_save") else None,
        "use_rslora": bool(raw.get("use_rslora", False)),
        "use_dora": bool(raw.get("use_dora", False)),
        "init": "gaussian" if init == "gaussian" else "kaiming",
        "bias": raw.get("bias", "none") or "none",
        "rank_pattern": raw.get("rank_pattern") or None,
        "alpha_pattern": raw.get("alpha_pattern") or None,
        "task_type": raw.get("task_type"),
        "base_model_name_or_path": raw.get("base_model_name_or_path"),
    }
