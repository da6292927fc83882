import pytest
import torch

import lorakit
from lorakit.lora import lora_layers
from tiny_models import logits, randomize_adapters, tiny_llama


def _two_adapters():
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]), adapter="a")
    randomize_adapters(model, seed=1)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), adapter="b")
    randomize_adapters(model, seed=2)
    return model


def test_set_adapter_switches_and_sums(ids):
    model = _two_adapters()
    base = logits(tiny_llama(), ids)
    lorakit.set_adapter(model, "a")
    out_a = logits(model, ids)
    lorakit.set_adapter(model, "b")
    out_b = logits(model, ids)
    lorakit.set_adapter(model, None)
    assert torch.allclose(logits(model, ids), base, atol=1e-6)
    assert not torch.allclose(out_a, out_b)
    lorakit.set_adapter(model, ["a", "b"])
    both = logits(model, ids)
    assert not torch.allclose(both, out_a) and not torch.allclose(both, out_b)
    with pytest.raises(lorakit.AdapterNotFoundError, match="loaded adapters: \\['a', 'b'\\]"):
        lorakit.set_adapter(model, "c")


def test_disable_adapters_is_scoped(ids):
    model = _two_adapters()
    adapted = logits(model, ids)
    with lorakit.disable_adapters(model):
        assert torch.allclose(logits(model, ids), logits(tiny_llama(), ids), atol=1e-6)
    assert torch.equal(logits(model, ids), adapted)


def test_delete_adapter_unwraps_empty_layers(ids):
    model = _two_adapters()
    lorakit.set_adapter(model, "a")
    out_a = logits(model, ids)
    lorakit.delete_adapter(model, "b")
    assert lorakit.list_adapters(model) == ["a"]
    assert "model.layers.0.self_attn.v_proj" not in lora_layers(model)
    assert isinstance(model.model.layers[0].self_attn.v_proj, torch.nn.Linear)
    assert torch.equal(logits(model, ids), out_a)
    lorakit.delete_adapter(model, "a")
    assert lora_layers(model) == {}
    assert set(model.state_dict()) == set(tiny_llama().state_dict())


def test_trainable_line_matches_peft_format():
    from lorakit.lora import trainable_line

    model = lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    trainable, total = lorakit.trainable_parameters(model)
    assert trainable == 2 * (2 * 32 + 32 * 2)
    assert trainable_line(model) == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )
