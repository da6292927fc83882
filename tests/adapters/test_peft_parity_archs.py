"""More decoder architectures than peft_cases' four: a lorakit adapter (all linear layers, or
the token embedding; plain and DoRA) loads in peft with the same logits.

Each family has its own quirks on the way to the logits (fused QKV in Phi-3 / Falcon /
GPT-NeoX / Bloom, q/k biases in Qwen2, q/k norms in Qwen3, scaled embeddings or scaled
hidden states in Gemma 1/2, sliding windows in Mistral); the adapter math must not care.
"""

import peft
import pytest
import torch
import transformers

import lorakit
from peft_cases import assert_close, assert_differs
from tiny_models import VOCAB, logits, randomize_adapters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

_DIMS = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
# family: (config class, model class, config fields, the token embedding's name)
ARCHS = {
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(num_key_value_heads=2, **_DIMS),
        "embed_tokens",
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(num_key_value_heads=2, head_dim=8, **_DIMS),
        "embed_tokens",
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(num_key_value_heads=2, sliding_window=4, **_DIMS),
        "embed_tokens",
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(num_key_value_heads=4, pad_token_id=0, eos_token_id=1, **_DIMS),
        "embed_tokens",
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        dict(num_key_value_heads=2, head_dim=8, **_DIMS),
        "embed_tokens",
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(num_key_value_heads=2, head_dim=8, **_DIMS),
        "embed_tokens",
    ),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_DIMS), "embed_in"),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
        "word_embeddings",
    ),
    "bloom": (
        "BloomConfig",
        "BloomForCausalLM",
        dict(hidden_size=32, n_layer=2, n_head=4),
        "word_embeddings",
    ),
}


def _base(arch: str) -> torch.nn.Module:
    config_cls, model_cls, fields, _ = ARCHS[arch]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(vocab_size=VOCAB, **fields)
    return getattr(transformers, model_cls)(config).eval()


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_adapter_loads_in_peft_with_same_logits(arch, use_dora, ids, tmp_path):
    reference = logits(_base(arch), ids)
    for i, targets in enumerate(["all-linear", [ARCHS[arch][3]]]):
        config = lorakit.LoraConfig(r=4, alpha=8, target_modules=targets, use_dora=use_dora)
        model = randomize_adapters(lorakit.inject(_base(arch), config), std=0.1)
        expected = logits(model, ids)
        assert_differs(expected, reference)
        lorakit.save_adapter(model, tmp_path / f"adapter{i}")
        loaded = peft.PeftModel.from_pretrained(_base(arch), tmp_path / f"adapter{i}")
        assert_close(logits(loaded, ids), expected)
