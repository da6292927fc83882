import pytest
import torch

import lorakit
from lorakit.lora import LoraLayer, ModulesToSave, lora_layers
from tiny_models import (
    logits,
    randomize_adapters,
    tiny_bert_cls,
    tiny_gemma3,
    tiny_gpt2,
    tiny_llama,
    tiny_opt,
)

CASES = [
    (tiny_llama, dict(target_modules=["q_proj", "v_proj", "embed_tokens", "down_proj"])),
    (tiny_llama, dict(target_modules=["q_proj", "o_proj"], use_dora=True)),
    (tiny_llama, dict(target_modules=["v_proj", "embed_tokens"], use_dora=True)),
    (tiny_gemma3, dict(target_modules=["q_proj", "embed_tokens"])),  # scaled embedding, tied
    (tiny_gemma3, dict(target_modules=["embed_tokens"], use_dora=True)),
    (tiny_gpt2, dict(target_modules="all-linear", use_rslora=True)),
    (tiny_opt, dict(target_modules=["q_proj", "fc1"], init="pissa")),
    (tiny_bert_cls, dict(target_modules=["query", "value"], modules_to_save=["classifier"])),
]


@pytest.mark.parametrize("factory,kw", CASES)
def test_merge_unmerge_keep_outputs(factory, kw, ids):
    model = randomize_adapters(lorakit.inject(factory(), lorakit.LoraConfig(r=4, **kw)))
    expected = logits(model, ids)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    lorakit.merge(model)
    assert all(layer.merged == ["default"] for layer in lora_layers(model).values())
    assert torch.allclose(logits(model, ids), expected, atol=1e-5)
    lorakit.unmerge(model)
    assert torch.allclose(logits(model, ids), expected, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, weights[k], atol=1e-5), k


@pytest.mark.parametrize("factory,kw", CASES)
def test_merge_and_unload_leaves_plain_modules(factory, kw, ids):
    model = randomize_adapters(lorakit.inject(factory(), lorakit.LoraConfig(r=4, **kw)))
    expected = logits(model, ids)
    plain = lorakit.merge_and_unload(model)
    assert not any(isinstance(m, LoraLayer | ModulesToSave) for m in plain.modules())
    assert lorakit.list_adapters(plain) == []
    assert torch.allclose(logits(plain, ids), expected, atol=1e-5)
    base = factory()
    count = sum(p.numel() for p in base.parameters())
    if (
        getattr(base.config, "tie_word_embeddings", False)
        and "embed_tokens" in kw["target_modules"]
    ):
        count += base.get_output_embeddings().weight.numel()  # merging untied the head
        assert plain.config.tie_word_embeddings is False
    assert sum(p.numel() for p in plain.parameters()) == count


def test_merged_model_saves_and_reloads_with_plain_transformers(tmp_path, ids):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(tie=True)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    randomize_adapters(model)
    expected = logits(model, ids)
    plain = lorakit.merge_and_unload(model)
    # Merging into a tied embedding must not silently change the LM head too.
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    assert torch.allclose(logits(plain, ids), expected, atol=1e-5)
    plain.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(logits(reloaded.eval(), ids), expected, atol=1e-5)


def test_merged_adapter_is_skipped_in_forward_and_blocks_disable(ids):
    model = randomize_adapters(
        lorakit.inject(tiny_llama(), lorakit.LoraConfig(target_modules=["q_proj"]))
    )
    lorakit.merge(model)
    with pytest.raises(lorakit.ConfigError, match="unmerge"), lorakit.disable_adapters(model):
        pass
    with pytest.raises(lorakit.ConfigError, match="unmerge"):
        lorakit.delete_adapter(model, "default")
    merge_twice = logits(model, ids)
    lorakit.merge(model)  # already merged: no double add
    assert torch.equal(logits(model, ids), merge_twice)


def test_merge_without_active_adapter_is_an_error():
    model = lorakit.inject(tiny_llama(), lorakit.LoraConfig(target_modules=["q_proj"]))
    lorakit.set_adapter(model, None)
    with pytest.raises(lorakit.ConfigError, match="no adapter to merge"):
        lorakit.merge(model)
    with pytest.raises(lorakit.AdapterNotFoundError, match="missing"):
        lorakit.merge(model, "missing")
