"""lorakit → peft: what save_adapter writes is what peft writes, and peft loads it with the same
logits (tiny random models, fp32, fresh seeded bases with identical weights)."""

from __future__ import annotations

import pytest
import torch

import lorakit
from peft_cases import (
    ARCHS,
    CASES,
    assert_close,
    assert_differs,
    base,
    lorakit_config,
    peft,
    peft_config,
    saved,
)
from tiny_models import logits, randomize_adapters

pytestmark = [  # peft's notes on offline lookups and transformers deprecations, not findings
    pytest.mark.filterwarnings("ignore::UserWarning:peft"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


PREFIX = "base_model.model."


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_lorakit_adapter_loads_in_peft_with_same_logits(arch, variant, ids, tmp_path):
    fresh = base(arch)
    reference = logits(base(arch), ids)
    assert_close(logits(fresh, ids), reference, 0.0)  # same seed, same base
    model = lorakit.inject(base(arch), lorakit_config(arch, variant))
    randomize_adapters(model, std=0.1)  # B != 0; also DoRA magnitudes, biases, heads
    expected = logits(model, ids)
    assert_differs(expected, reference)
    lorakit.save_adapter(model, tmp_path / "adapter")

    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert_close(logits(loaded, ids), expected)


@pytest.mark.parametrize(
    "targets",
    [["q_proj", "embed_tokens"], ["q_proj", "lm_head"], ["embed_tokens", "lm_head"], "all-linear"],
)
def test_tied_embeddings_adapter_loads_in_peft(targets, ids, tmp_path):
    model = lorakit.inject(base("llama", tie=True), lorakit.LoraConfig(r=4, target_modules=targets))
    randomize_adapters(model, std=0.1)
    lorakit.save_adapter(model, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(base("llama", tie=True), tmp_path / "adapter")
    assert_close(logits(loaded, ids), logits(model, ids))


def test_lorakit_classifier_head_is_restored_by_peft(ids, tmp_path):
    model = lorakit.inject(base("bert"), lorakit_config("bert", "plain"))
    randomize_adapters(model, std=0.1)
    lorakit.save_adapter(model, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(base("bert"), tmp_path / "adapter")
    assert type(loaded).__name__ == "PeftModelForSequenceClassification"
    head = loaded.base_model.model.classifier.modules_to_save["default"]
    ours = model.classifier.copies["default"]
    assert_differs(head.weight, base("bert").classifier.weight)
    assert_close(head.weight, ours.weight, 0.0)
    assert_close(head.bias, ours.bias, 0.0)
    # With LoRA off peft also runs the original head: the restored copy is the one in use.
    with loaded.disable_adapter():
        assert_close(logits(loaded, ids), logits(base("bert"), ids))
    assert_close(logits(loaded, ids), logits(model, ids))


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_saved_keys_shapes_and_config_match_peft(arch, variant, tmp_path):
    task_type = ARCHS[arch]["task_type"]
    name = str(tmp_path / arch)  # a local path, as peft records it
    model = lorakit.inject(base(arch, name), lorakit_config(arch, variant, task_type=task_type))
    lorakit.save_adapter(model, tmp_path / "ours")
    pmodel = peft.get_peft_model(base(arch, name), peft_config(arch, variant))
    pmodel.save_pretrained(tmp_path / "peft")
    ours, our_tensors = saved(tmp_path / "ours")
    theirs, their_tensors = saved(tmp_path / "peft")

    assert ours["peft_type"] == theirs["peft_type"] == "LORA"
    assert ours["base_model_name_or_path"] == theirs["base_model_name_or_path"] == name
    for key in ("task_type", "r", "lora_alpha", "bias", "use_rslora", "use_dora", "fan_in_fan_out"):
        assert ours[key] == theirs[key], key
    for key in ("rank_pattern", "alpha_pattern", "exclude_modules"):
        assert ours[key] == theirs[key], key
    if variant == "regex":
        assert ours["target_modules"] == theirs["target_modules"]
    elif variant != "all_linear":  # peft writes a set, in any order
        assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"])

    # peft also writes a targeted embedding's full base weight (it may have been resized), and
    # with bias="all" the biases inside its modules_to_save wrapper: lorakit needs neither.
    extra = {k for k in their_tensors if k.endswith(".base_layer.weight")}
    assert not extra or variant in ("embedding", "dora_embedding")
    wrapped = {k for k in their_tensors if ".modules_to_save." in k or ".original_module." in k}
    assert not wrapped or variant == "bias_all"
    assert set(our_tensors) == set(their_tensors) - extra - wrapped
    for key, tensor in our_tensors.items():
        assert tensor.shape == their_tensors[key].shape, key
        assert tensor.dtype == their_tensors[key].dtype == torch.float32


def test_saved_key_names_and_shapes(tmp_path):
    config = lorakit.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "embed_tokens"])
    lorakit.save_adapter(lorakit.inject(base("llama", "tiny/llama"), config), tmp_path / "a")
    fields, tensors = saved(tmp_path / "a")
    assert fields["peft_type"] == "LORA"
    assert fields["task_type"] == "CAUSAL_LM"
    assert fields["base_model_name_or_path"] == "tiny/llama"
    assert (fields["r"], fields["lora_alpha"]) == (4, 8)
    q = f"{PREFIX}model.layers.0.self_attn.q_proj"
    assert tensors[f"{q}.lora_A.weight"].shape == (4, 32)  # [r, in]
    assert tensors[f"{q}.lora_B.weight"].shape == (32, 4)  # [out, r]
    emb = f"{PREFIX}model.embed_tokens"
    assert tensors[f"{emb}.lora_embedding_A"].shape == (4, 96)  # [r, vocab]
    assert tensors[f"{emb}.lora_embedding_B"].shape == (32, 4)  # [dim, r]
    assert len(tensors) == 2 * 2 + 2


def test_saved_conv1d_keys_are_in_linear_form(tmp_path):
    config = lorakit.LoraConfig(r=4, target_modules=["c_attn"])
    lorakit.save_adapter(lorakit.inject(base("gpt2"), config), tmp_path / "a")
    fields, tensors = saved(tmp_path / "a")
    assert fields["fan_in_fan_out"] is True
    c_attn = f"{PREFIX}transformer.h.1.attn.c_attn"
    assert tensors[f"{c_attn}.lora_A.weight"].shape == (4, 32)  # [r, in]
    assert tensors[f"{c_attn}.lora_B.weight"].shape == (96, 4)  # [out, r]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_task_type_is_inferred_from_the_head_class(arch, tmp_path):
    """Without task_type in the config, the saved one is the peft task type of the model's head
    (GPT2LMHeadModel is a causal LM, so peft loads it as PeftModelForCausalLM)."""
    model = lorakit.inject(base(arch), lorakit_config(arch, "plain"))
    lorakit.save_adapter(model, tmp_path / "a")
    assert saved(tmp_path / "a")[0]["task_type"] == ARCHS[arch]["task_type"]


@pytest.mark.parametrize(
    ("arch", "variant"),
    [
        ("llama", "plain"),
        ("llama", "rslora"),
        ("llama", "patterns"),
        ("llama", "embedding"),
        ("llama", "dora"),
        ("gpt2", "plain"),
        ("bert", "plain"),
        ("opt", "patterns"),
    ],
)
def test_pissa_adapter_loads_in_peft_on_original_base(arch, variant, ids, tmp_path):
    reference = logits(base(arch), ids)
    config = lorakit_config(arch, variant, init="pissa")
    model = lorakit.inject(base(arch), config)
    assert_close(logits(model, ids), reference, 1e-4)  # PiSSA starts equal to the base
    randomize_adapters(model, std=0.05)  # as after training
    expected = logits(model, ids)
    assert_differs(expected, reference)
    lorakit.save_adapter(model, tmp_path / "adapter")
    fields, tensors = saved(tmp_path / "adapter")
    assert fields["init_lora_weights"] is True  # plain LoRA now: peft must not re-run PiSSA
    for key, A in tensors.items():  # [A; A0]: twice the rank, against the original base
        if key.endswith(("lora_A.weight", "lora_embedding_A")):
            module = key.removeprefix(PREFIX).rsplit(".lora_", 1)[0]
            assert A.shape[0] == 2 * config.rank_for(module), key

    original = base(arch)
    assert_close(logits(original, ids), reference, 0.0)
    loaded = peft.PeftModel.from_pretrained(original, tmp_path / "adapter")
    assert_close(logits(loaded, ids), expected)
