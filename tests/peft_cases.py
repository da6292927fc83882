"""The same adapter described to lorakit and to peft, on each tiny architecture.

Used by tests/adapters/test_peft_parity_*.py. peft is a test-only dependency that
`make test` installs, so it is imported plainly: a missing peft is a failure, not a skip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import peft
import torch
from safetensors.torch import load_file

import lorakit
from tiny_models import tiny_bert_cls, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_opt

TOL = 1e-5  # max abs logit difference, fp32

# Per architecture: factory, peft task type, targets, the embedding's name, a rank_pattern and
# an alpha_pattern (a leaf name and a layer-specific regex), modules_to_save, a module for
# exclude_modules, whether its layers have biases, and peft-only LoraConfig fields.
ARCHS: dict[str, dict] = {
    "llama": dict(
        factory=tiny_llama,
        task_type="CAUSAL_LM",
        targets=["q_proj", "v_proj", "down_proj"],
        embedding="embed_tokens",
        rank_pattern={"v_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        alpha_pattern={"q_proj": 3, "down_proj": 12},
        exclude="layers.0.self_attn.q_proj",
        has_bias=False,
    ),
    "gemma3": dict(  # a scaled embedding (embed_scale in its forward), tied LM head
        factory=tiny_gemma3,
        task_type="CAUSAL_LM",
        targets=["q_proj", "o_proj", "up_proj"],
        embedding="embed_tokens",
        rank_pattern={"o_proj": 2},
        alpha_pattern={"up_proj": 12},
        exclude="layers.0.self_attn.q_proj",
        has_bias=False,
    ),
    "bert": dict(
        factory=tiny_bert_cls,
        task_type="SEQ_CLS",
        targets=["query", "value", "output.dense"],
        embedding="word_embeddings",
        rank_pattern={"value": 2, r"layer\.0\.output\.dense": 6},
        alpha_pattern={"query": 5},
        modules_to_save=["classifier"],
        exclude="layer.0.attention.self.query",
    ),
    "gpt2": dict(  # Conv1D layers
        factory=tiny_gpt2,
        task_type="CAUSAL_LM",
        targets=["c_attn", "c_proj", "c_fc"],
        embedding="wte",
        rank_pattern={r"mlp\.c_proj": 2, "c_attn": 6},
        alpha_pattern={r"h\.0\.attn\.c_proj": 3},
        exclude="h.0.attn.c_attn",
        peft_extra={"fan_in_fan_out": True},
    ),
    "opt": dict(
        factory=tiny_opt,
        task_type="CAUSAL_LM",
        targets=["q_proj", "v_proj", "fc1"],
        embedding="embed_tokens",
        rank_pattern={"fc1": 2},
        alpha_pattern={"v_proj": 12, r"layers\.0\.self_attn\.q_proj": 2},
        exclude="layers.0.self_attn.q_proj",
    ),
}
VARIANTS = (
    "plain",
    "rslora",
    "dora",
    "embedding",
    "dora_embedding",
    "patterns",
    "all_linear",
    "lora_only",
    "bias_all",
    "regex",
)
CASES = [
    (arch, variant)
    for arch, spec in ARCHS.items()
    for variant in VARIANTS
    if spec.get("has_bias", True) or variant not in ("lora_only", "bias_all")
]


def lorakit_config(arch: str, variant: str, **extra) -> lorakit.LoraConfig:
    spec = ARCHS[arch]
    kw = dict(
        r=4,
        alpha=8,
        target_modules=list(spec["targets"]),
        modules_to_save=spec.get("modules_to_save"),
    )
    if variant == "rslora":
        kw["use_rslora"] = True
    elif variant == "dora":
        kw["use_dora"] = True
    elif variant == "embedding":
        kw["target_modules"] = [*spec["targets"], spec["embedding"]]
    elif variant == "dora_embedding":
        kw.update(target_modules=[*spec["targets"], spec["embedding"]], use_dora=True)
    elif variant == "patterns":
        kw.update(rank_pattern=spec["rank_pattern"], alpha_pattern=spec["alpha_pattern"])
    elif variant == "all_linear":
        kw["target_modules"] = "all-linear"
    elif variant == "lora_only":
        kw["bias"] = "lora_only"
    elif variant == "bias_all":
        kw["bias"] = "all"
    elif variant == "regex":  # a full-match regex string, and an exclusion by name suffix
        kw["target_modules"] = r".*\.(" + "|".join(map(re.escape, spec["targets"])) + ")"
        kw["exclude_modules"] = [spec["exclude"]]
    return lorakit.LoraConfig(**{**kw, **extra})


def peft_config(arch: str, variant: str, **extra) -> peft.LoraConfig:
    """peft's LoraConfig for the same adapter as lorakit_config(arch, variant).

    With the peft task type; for SEQ_CLS peft adds the classifier to modules_to_save itself.
    """
    c = lorakit_config(arch, variant)
    return peft.LoraConfig(
        task_type=ARCHS[arch]["task_type"],
        r=c.r,
        lora_alpha=c.alpha,
        target_modules=c.target_modules,
        exclude_modules=c.exclude_modules,
        use_rslora=c.use_rslora,
        use_dora=c.use_dora,
        bias=c.bias,
        rank_pattern=c.rank_pattern or {},
        alpha_pattern=c.alpha_pattern or {},
        **{**ARCHS[arch].get("peft_extra", {}), **extra},
    )


def base(arch: str, name: str | None = None, **kw) -> torch.nn.Module:
    """A fresh tiny base model; the factories are seeded, so every call gives the same weights."""
    model = ARCHS[arch]["factory"](**kw)
    if name:  # only where checked: peft then tries to look the name up on the (offline) hub
        model.name_or_path = model.config._name_or_path = name
    return model


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol:g}"


def assert_differs(a: torch.Tensor, b: torch.Tensor) -> None:
    """Guards against vacuous passes: the adapter must change the output."""
    assert (a - b).abs().max().item() > 1e-3


def saved(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, adapter_model.safetensors) of an adapter directory."""
    config = json.loads((path / "adapter_config.json").read_text())
    return config, load_file(path / "adapter_model.safetensors")
