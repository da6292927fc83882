"""Tiny random models of several families, exported to GGUF and run by llama.cpp itself:
its logits must be lorakit's (transformers') logits, with and without a LoRA adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lorakit
from export.llama_helpers import SAMPLE, llama, llama_logits, tiny_causal_lm, torch_logits
from lorakit.export.config import ExportConfig
from lorakit.export.run import export

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma", "phi3", "gemma3"]
# config fields a family needs to show what differs: qwen3 a head_dim != hidden / heads;
# gemma3 sliding-window layers (window 8 < the 23-token sample) beside a full one
EXTRA = {
    "qwen3": {"head_dim": 32},
    "gemma3": {
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 8,
        "num_hidden_layers": 3,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    },
}


def _base(tmp_path, kind, tokenizer, **extra):
    model = tiny_causal_lm(kind, len(tokenizer), **extra)
    directory = (
        tmp_path / "tiny"
    )  # (a name with "phi3" in it makes llama.cpp expect Phi-3's tokens)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, directory


def _ids(tokenizer):
    return tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_merged_model_runs_in_llamacpp_with_the_same_logits(tmp_path, smol_tokenizer, kind):
    model, directory = _base(tmp_path, kind, smol_tokenizer, **EXTRA.get(kind, {}))
    (out,) = export(
        ExportConfig(model=str(directory), output=str(tmp_path / "m.gguf"), dtype="f32")
    )
    ids = _ids(smol_tokenizer)
    ref, got = torch_logits(model, ids), llama_logits(out, ids)
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 1.0  # varied logits: a wrong layout could not pass by accident
    assert np.abs(got - ref).max() < 0.01 * scale
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize(
    "kind, lora",
    [
        ("llama", {}),  # q / k rows reordered for GGML's rotary layout
        ("mistral", {"rank_pattern": {"v_proj": 2}}),
        ("qwen2", {"use_rslora": True}),  # scaling folded into B, alpha 0
        ("qwen3", {"alpha_pattern": {"o_proj": 3.0}}),
        ("gpt2", {}),  # Conv1D layers
        ("gemma", {}),  # RMSNorm (1 + w), embedding scaled by sqrt(hidden) inside llama.cpp
        ("phi3", {}),  # fused qkv_proj and gate_up_proj
        ("gemma3", {"use_rslora": True}),
    ],
)
def test_lora_gguf_applied_by_llamacpp_gives_the_adapted_logits(
    tmp_path, smol_tokenizer, kind, lora
):
    model, directory = _base(tmp_path, kind, smol_tokenizer, **EXTRA.get(kind, {}))
    (base_gguf,) = export(
        ExportConfig(model=str(directory), output=str(tmp_path / "b.gguf"), dtype="f32")
    )
    ids = _ids(smol_tokenizer)
    base_ref = torch_logits(model, ids)
    torch.manual_seed(1)
    config = lorakit.LoraConfig(
        r=4, alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", **lora
    )
    lorakit.inject(model, config)
    with torch.no_grad():  # a random B, so the adapter changes every output
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.3)
    ref = torch_logits(model, ids)
    lorakit.save_adapter(model, tmp_path / "adapter")
    (lora_gguf,) = export(
        ExportConfig(
            format="gguf-lora",
            adapter=str(tmp_path / "adapter"),
            model=str(directory),
            output=str(tmp_path / "a.gguf"),
        )
    )
    got = llama_logits(base_gguf, ids, lora=lora_gguf)
    effect = np.abs(ref - base_ref).max()
    assert effect > 1.0  # the adapter matters
    assert np.abs(got - ref).max() < 0.02 * effect
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_llamacpp_tokenizes_like_the_transformers_tokenizer(tmp_path, smol_tokenizer):
    _, directory = _base(tmp_path, "llama", smol_tokenizer)
    (out,) = export(ExportConfig(model=str(directory), output=str(tmp_path / "m.gguf")))
    texts = [SAMPLE, "  two  spaces\nand\ttabs", "1234567 digits", "<|im_start|>user\nhi<|im_end|>"]
    with llama(out, logits_all=False) as model:
        for text in texts:
            want = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert model.tokenize(text.encode(), add_bos=False, special=True) == want


def test_dtypes_load_in_llamacpp_and_shrink_the_file(tmp_path, smol_tokenizer):
    model, directory = _base(tmp_path, "llama", smol_tokenizer)
    ids = _ids(smol_tokenizer)
    ref = torch_logits(model, ids)
    sizes = {}
    for dtype, tolerance in (("f32", 0.01), ("f16", 0.02), ("bf16", 0.05), ("q8_0", 0.05)):
        out = tmp_path / f"{dtype}.gguf"
        export(ExportConfig(model=str(directory), output=str(out), dtype=dtype))
        got = llama_logits(out, ids)
        assert np.abs(got - ref).max() < tolerance * np.abs(ref).max(), dtype
        sizes[dtype] = out.stat().st_size
    assert sizes["f32"] > 1.7 * sizes["f16"]  # (the tokenizer metadata is the same in both)
    assert abs(sizes["f16"] - sizes["bf16"]) < 0.01 * sizes["f16"]
    assert sizes["q8_0"] < 0.7 * sizes["f16"]
