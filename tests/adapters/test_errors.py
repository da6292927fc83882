"""Bad adapter files raise LorakitError subclasses with clear messages; the model is unchanged."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.lora import lora_layers
from tiny_models import logits, randomize_adapters, tiny_bert_cls, tiny_llama


@pytest.fixture
def saved(tmp_path):
    model = randomize_adapters(
        lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    )
    return lorakit.save_adapter(model, tmp_path / "adapter")


def _assert_untouched(model, before, ids):
    assert lora_layers(model) == {} and lorakit.list_adapters(model) == []
    assert set(model.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, ids), logits(tiny_llama(), ids))


def _load_fails(path, error, match, ids, model=None):
    model = model or tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        lorakit.load_adapter(model, path)
    if isinstance(model, type(tiny_llama())):
        _assert_untouched(model, before, ids)
    return model


def test_missing_directory(tmp_path, ids):
    _load_fails(tmp_path / "nope", lorakit.AdapterFormatError, "does not exist", ids)


def test_missing_config(saved, ids):
    (saved / "adapter_config.json").unlink()
    _load_fails(saved, lorakit.AdapterFormatError, "no adapter_config.json", ids)


def test_malformed_config(saved, ids):
    (saved / "adapter_config.json").write_text("{not json")
    _load_fails(saved, lorakit.AdapterFormatError, "not valid JSON", ids)


def test_config_with_bad_values(saved, ids):
    raw = json.loads((saved / "adapter_config.json").read_text())
    raw["r"] = 0
    (saved / "adapter_config.json").write_text(json.dumps(raw))
    _load_fails(saved, lorakit.AdapterFormatError, "r must be a positive integer", ids)


@pytest.mark.parametrize("peft_type", ["IA3", "LOHA", "PREFIX_TUNING"])
def test_unsupported_peft_type(saved, ids, peft_type):
    raw = json.loads((saved / "adapter_config.json").read_text())
    raw["peft_type"] = peft_type
    (saved / "adapter_config.json").write_text(json.dumps(raw))
    _load_fails(
        saved, lorakit.UnsupportedAdapterError, f"peft_type '{peft_type}' is not supported", ids
    )


def test_truncated_safetensors(saved, ids):
    data = (saved / "adapter_model.safetensors").read_bytes()
    (saved / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    _load_fails(saved, lorakit.AdapterFormatError, "truncated or corrupted", ids)


def test_corrupted_header(saved, ids):
    data = bytearray((saved / "adapter_model.safetensors").read_bytes())
    data[8:20] = b"\xff" * 12
    (saved / "adapter_model.safetensors").write_bytes(bytes(data))
    _load_fails(saved, lorakit.AdapterFormatError, "truncated or corrupted", ids)


def test_pickle_only_refused_unless_allowed(saved, ids):
    tensors = load_file(saved / "adapter_model.safetensors")
    (saved / "adapter_model.safetensors").unlink()
    torch.save(tensors, saved / "adapter_model.bin")
    _load_fails(saved, lorakit.AdapterFormatError, "pickle", ids)
    model = tiny_llama()
    assert lorakit.load_adapter(model, saved, allow_pickle=True) == "default"
    assert len(lora_layers(model)) == 4


def test_adapter_for_another_base_names_module_and_shapes(tmp_path, ids):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wider = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    lorakit.inject(wider, lorakit.LoraConfig(r=4, target_modules=["q_proj"]))
    path = lorakit.save_adapter(wider, tmp_path / "wide")
    _load_fails(
        path,
        lorakit.AdapterMismatchError,
        r"model\.layers\.0\.self_attn\.q_proj: adapter has A \[4, 64\] and B \[64, 4\], but the layer needs A \[r, 32\]",
        ids,
    )


def test_adapter_with_modules_the_model_lacks(saved, ids):
    tensors = load_file(saved / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"] = torch.zeros(32, 4)
    save_file(tensors, saved / "adapter_model.safetensors")
    _load_fails(
        saved,
        lorakit.AdapterMismatchError,
        r"'model\.layers\.7\.self_attn\.q_proj', which this model lacks",
        ids,
    )


def test_unknown_and_incomplete_keys(saved, ids):
    tensors = load_file(saved / "adapter_model.safetensors")
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    save_file(tensors, saved / "adapter_model.safetensors")
    _load_fails(saved, lorakit.AdapterFormatError, "only one of lora_A / lora_B", ids)
    tensors["something.else"] = torch.zeros(1)
    save_file(tensors, saved / "adapter_model.safetensors")
    _load_fails(saved, lorakit.AdapterFormatError, "unexpected tensor 'something.else'", ids)


def test_rank_disagreeing_with_config(saved, ids):
    raw = json.loads((saved / "adapter_config.json").read_text())
    raw["r"] = 8
    (saved / "adapter_config.json").write_text(json.dumps(raw))
    _load_fails(
        saved,
        lorakit.AdapterFormatError,
        "tensors have rank 4 but adapter_config.json gives r=8",
        ids,
    )


def test_classifier_head_with_other_label_count(tmp_path):
    model = lorakit.inject(
        tiny_bert_cls(num_labels=5),
        lorakit.LoraConfig(target_modules=["query"], modules_to_save=["classifier"]),
    )
    path = lorakit.save_adapter(model, tmp_path / "five")
    three = tiny_bert_cls(num_labels=3)
    with pytest.raises(
        lorakit.AdapterMismatchError,
        match=r"classifier\.(weight|bias): adapter has \[5(, 32)?\], the model has \[3(, 32)?\]",
    ):
        lorakit.load_adapter(three, path)
    assert lora_layers(three) == {}


def test_name_clash_and_existing_output(saved):
    model = tiny_llama()
    lorakit.load_adapter(model, saved, "x")
    with pytest.raises(lorakit.ConfigError, match="already exists"):
        lorakit.load_adapter(model, saved, "x")
    stamp = (saved / "adapter_model.safetensors").read_bytes()
    with pytest.raises(lorakit.OutputExistsError, match="overwrite"):
        lorakit.save_adapter(model, saved, "x")
    assert (saved / "adapter_model.safetensors").read_bytes() == stamp
