import pytest
import torch

import lorakit
from lorakit.lora import find_targets, lora_layers
from tiny_models import logits, tiny_bert_cls, tiny_gpt2, tiny_llama, tiny_mlp


def _targets(model, **kw):
    return sorted(find_targets(model, lorakit.LoraConfig(**kw)))


def test_list_matches_exact_name_or_dotted_suffix():
    model = tiny_llama()
    names = _targets(model, target_modules=["q_proj", "layers.1.mlp.up_proj"])
    assert names == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    assert _targets(model, target_modules=["proj"]) == []  # suffix must start after a dot


def test_regex_string_must_match_whole_name():
    model = tiny_llama()
    assert _targets(model, target_modules=r".*layers\.0\.self_attn\.(q|v)_proj") == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert _targets(model, target_modules="q_proj") == []  # full match, not search


def test_all_linear_skips_output_head_and_embeddings():
    llama = _targets(tiny_llama(), target_modules="all-linear")
    assert len(llama) == 2 * 7 and "lm_head" not in llama
    gpt2 = _targets(tiny_gpt2(), target_modules="all-linear")  # Conv1D layers count as linear
    assert gpt2 == sorted(
        f"transformer.h.{i}.{m}"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    mlp = _targets(tiny_mlp(), target_modules="all-linear")  # no known head on a plain module
    assert mlp == ["fc1", "fc2", "head"]


def test_exclude_and_modules_to_save_are_never_targets():
    bert = tiny_bert_cls()
    names = _targets(
        bert, target_modules="all-linear", exclude_modules=["value"], modules_to_save=["classifier"]
    )
    assert not any(n.endswith("value") or n.startswith("classifier") for n in names)
    assert "bert.encoder.layer.0.attention.self.query" in names


def test_inject_freezes_all_but_adapter_and_saved_modules():
    model = lorakit.inject(
        tiny_bert_cls(),
        lorakit.LoraConfig(r=2, target_modules=["query"], modules_to_save=["classifier"]),
    )
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "bert.encoder.layer.0.attention.self.query.adapters.default.A",
        "bert.encoder.layer.0.attention.self.query.adapters.default.B",
        "bert.encoder.layer.1.attention.self.query.adapters.default.A",
        "bert.encoder.layer.1.attention.self.query.adapters.default.B",
        "classifier.copies.default.bias",
        "classifier.copies.default.weight",
    ]
    assert lorakit.trainable_parameters(model) == (
        2 * (2 * 32 + 32 * 2) + 3 * 32 + 3,
        sum(p.numel() for p in model.parameters()),
    )


@pytest.mark.parametrize("bias,expected", [("none", 0), ("lora_only", 2 * 32), ("all", None)])
def test_bias_modes(bias, expected):
    model = lorakit.inject(
        tiny_bert_cls(), lorakit.LoraConfig(r=2, target_modules=["query"], bias=bias)
    )
    biases = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    if expected is None:
        assert len(biases) > 2 * 4
    else:
        assert sum(dict(model.named_parameters())[n].numel() for n in biases) == expected


def test_no_match_lists_candidates_and_leaves_model_untouched():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(lorakit.TargetNotFoundError, match=r"q_proj, k_proj, v_proj"):
        lorakit.inject(model, lorakit.LoraConfig(target_modules=["query"]))
    assert lora_layers(model) == {} and lorakit.list_adapters(model) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_bad_config_values_raise_lorakit_errors():
    with pytest.raises(lorakit.ConfigError, match="r must be a positive integer"):
        lorakit.LoraConfig(r=0)
    with pytest.raises(lorakit.ConfigError, match="unknown key"):
        lorakit.LoraConfig(rank=4)
    with pytest.raises(lorakit.ConfigError, match="rank_pattern"):
        lorakit.LoraConfig(rank_pattern={"q_proj": -1})
    with pytest.raises(lorakit.LorakitError):
        lorakit.LoraConfig(target_modules="(")


def test_second_adapter_shares_wrappers(ids):
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]), adapter="a")
    lorakit.inject(model, lorakit.LoraConfig(r=3, target_modules=["q_proj", "v_proj"]), adapter="b")
    q = lora_layers(model)["model.layers.0.self_attn.q_proj"]
    assert list(q.adapters) == ["a", "b"] and q.active == ["b"]
    assert not any(p.requires_grad for p in q.adapters["a"].parameters())
    assert all(p.requires_grad for p in q.adapters["b"].parameters())
    with pytest.raises(lorakit.ConfigError, match="already exists"):
        lorakit.inject(model, lorakit.LoraConfig(target_modules=["q_proj"]), adapter="a")


def test_plain_torch_model_trains_through_adapter():
    torch.manual_seed(0)
    model = lorakit.inject(
        tiny_mlp(), lorakit.LoraConfig(r=4, target_modules=["fc1", "fc2", "embed"])
    )
    model.train()
    ids = torch.randint(0, 96, (16, 5))
    target = torch.randint(0, 5, (16, 5))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    frozen = model.head.weight.detach().clone()
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, 5), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert torch.equal(model.head.weight, frozen)
    assert logits(model, ids).shape == (16, 5, 5)
