import json

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.lora import lora_layers
from tiny_models import logits, randomize_adapters, tiny_bert_cls, tiny_gpt2, tiny_llama, tiny_mlp

CASES = [
    (
        tiny_llama,
        dict(target_modules=["q_proj", "v_proj", "embed_tokens"], rank_pattern={"v_proj": 2}),
    ),
    (tiny_llama, dict(target_modules="all-linear", use_dora=True, use_rslora=True)),
    (tiny_gpt2, dict(target_modules="all-linear", bias="lora_only")),
    (
        tiny_bert_cls,
        dict(target_modules=["query", "value"], modules_to_save=["classifier"], bias="all"),
    ),
    (tiny_mlp, dict(target_modules=["fc1", "embed"], modules_to_save=["head"])),
    (
        tiny_llama,
        dict(target_modules=["q_proj", "o_proj"], init="pissa", alpha_pattern={"o_proj": 3}),
    ),
]


@pytest.mark.parametrize("factory,kw", CASES)
def test_save_then_load_gives_same_outputs(tmp_path, ids, factory, kw):
    model = randomize_adapters(lorakit.inject(factory(), lorakit.LoraConfig(r=4, **kw)))
    expected = logits(model, ids)
    path = lorakit.save_adapter(model, tmp_path / "a")
    fresh = factory()
    assert lorakit.load_adapter(fresh, path) == "default"
    assert torch.allclose(logits(fresh, ids), expected, atol=1e-5)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if ".adapters." in n)


def test_pissa_is_saved_as_plain_lora_against_the_original_base(tmp_path):
    model = randomize_adapters(
        lorakit.inject(
            tiny_llama(), lorakit.LoraConfig(r=4, init="pissa", target_modules=["q_proj"])
        )
    )
    path = lorakit.save_adapter(model, tmp_path / "p")
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["init_lora_weights"]) == (8, 32.0, True)
    tensors = load_file(path / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (
        8,
        32,
    )


def test_file_layout_and_config_fields(tmp_path):
    model = lorakit.inject(
        tiny_bert_cls(),
        lorakit.LoraConfig(
            r=2, alpha=4, target_modules="all-linear", modules_to_save=["classifier"]
        ),
    )
    path = lorakit.save_adapter(
        model, tmp_path / "bert", extra_files={"labels.json": ["neg", "neu", "pos"]}
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "labels.json",
    ]
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS"
    assert (cfg["r"], cfg["lora_alpha"]) == (2, 4)
    assert cfg["target_modules"] == [
        "dense",
        "key",
        "query",
        "value",
    ]  # 'all-linear' expanded, head excluded
    keys = load_file(path / "adapter_model.safetensors")
    assert "base_model.model.classifier.weight" in keys
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_load_into_model_with_other_adapters_keeps_active_set(tmp_path, ids):
    a = randomize_adapters(
        lorakit.inject(tiny_llama(), lorakit.LoraConfig(target_modules=["q_proj"])), seed=3
    )
    path = lorakit.save_adapter(a, tmp_path / "a")
    model = lorakit.inject(
        tiny_llama(), lorakit.LoraConfig(target_modules=["v_proj"]), adapter="mine"
    )
    grads = {n: p.requires_grad for n, p in model.named_parameters() if ".adapters." in n}
    name = lorakit.load_adapter(model, path)
    assert name == "default" and lorakit.list_adapters(model) == ["mine", "default"]
    assert lora_layers(model)["model.layers.0.self_attn.q_proj"].active == ["mine"]
    assert {n: p.requires_grad for n, p in model.named_parameters() if n in grads} == grads
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if ".adapters.default." in n
    )
    second = lorakit.load_adapter(model, path)
    assert second == "a"  # the directory's name when "default" is taken
    lorakit.set_adapter(model, "a")
    assert torch.allclose(logits(model, ids), logits(a, ids), atol=1e-5)


def test_trainable_load_resumes_training(tmp_path):
    a = lorakit.inject(tiny_llama(), lorakit.LoraConfig(target_modules=["q_proj"]))
    path = lorakit.save_adapter(a, tmp_path / "a")
    model = tiny_llama()
    lorakit.load_adapter(model, path, trainable=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(".adapters.default." in n for n in trainable)
