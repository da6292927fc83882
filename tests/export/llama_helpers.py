"""Helpers of the export tests: tiny models, llama.cpp runs. Exported files are checked by
llama.cpp itself (llama-cpp-python, which `make test` builds).

Tiny random models use the real SmolLM2 tokenizer (a byte-level BPE of 49,152 tokens), so
the GGUF tokenizer writer and llama.cpp's tokenizer are exercised on real merges.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

SAMPLE = "Hello there, 2024 was a year! Émotions: joy/sadness — 3.14?"


def tiny_causal_lm(kind: str, vocab: int, **extra):
    """A 2-layer random causal LM of family `kind`, weights scaled up so logits are varied."""
    import transformers as t

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if kind == "gpt2":
        config = t.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        model = t.GPT2LMHeadModel(config)
    else:
        classes = {
            "llama": (t.LlamaConfig, t.LlamaForCausalLM),
            "mistral": (t.MistralConfig, t.MistralForCausalLM),
            "qwen2": (t.Qwen2Config, t.Qwen2ForCausalLM),
            "qwen3": (t.Qwen3Config, t.Qwen3ForCausalLM),
            "gemma": (t.GemmaConfig, t.GemmaForCausalLM),
            "phi3": (t.Phi3Config, t.Phi3ForCausalLM),
            "gemma3": (t.Gemma3TextConfig, t.Gemma3ForCausalLM),
        }
        config_cls, model_cls = classes[kind]
        model = model_cls(config_cls(**{**common, **extra}))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4)
    return model.eval()


@contextlib.contextmanager
def llama(path, lora=None, **kw):
    """A llama.cpp model (and LoRA) loaded from GGUF files, closed afterwards."""
    from llama_cpp import Llama

    # one thread: llama.cpp's threads wait for each other at every operation, so on a busy
    # 2-core machine two of them can run many times slower than one
    kw = {"n_ctx": 128, "n_threads": 1, "verbose": False, "logits_all": True, **kw}
    model = Llama(str(path), lora_path=str(lora) if lora else None, **kw)
    try:
        yield model
    finally:
        model.close()


def llama_logits(path, ids: list[int], lora=None) -> np.ndarray:
    with llama(path, lora) as model:
        model.eval(ids)
        return np.array(model.scores[: len(ids)])


def torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
