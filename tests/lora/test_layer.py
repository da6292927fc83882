import math

import pytest
import torch
from torch import nn

import lorakit
from lorakit.lora import LoraLayer, lora_layers
from lorakit.lora.layer import Adapter
from tiny_models import logits, randomize_adapters, tiny_gpt2, tiny_llama, tiny_mlp


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_mlp])
def test_fresh_adapter_leaves_outputs_unchanged(factory, ids):
    base = logits(factory(), ids)
    model = lorakit.inject(factory(), lorakit.LoraConfig(r=4, target_modules="all-linear"))
    assert torch.equal(logits(model, ids), base)
    layer = next(iter(lora_layers(model).values()))
    assert torch.count_nonzero(layer.adapters["default"].B) == 0
    assert torch.count_nonzero(layer.adapters["default"].A) > 0


def test_linear_update_is_scaling_B_A_x():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoraLayer(base)
    ad = Adapter(6, 5, r=2, alpha=8)
    nn.init.normal_(ad.A)
    nn.init.normal_(ad.B)
    layer.add_adapter("a", ad)
    layer.active = ["a"]
    x = torch.randn(3, 4, 6)
    expected = base(x) + 4.0 * (x @ ad.A.T @ ad.B.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_conv1d_uses_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(7, 4)  # nf=7 outputs, nx=4 inputs, weight [4, 7]
    layer = LoraLayer(conv)
    assert layer.kind == "conv1d" and (layer.in_features, layer.out_features) == (4, 7)
    ad = Adapter(4, 7, r=3, alpha=3)
    nn.init.normal_(ad.A)
    nn.init.normal_(ad.B)
    layer.add_adapter("a", ad)
    layer.active = ["a"]
    x = torch.randn(2, 5, 4)
    assert torch.allclose(layer(x), conv(x) + x @ ad.A.T @ ad.B.T, atol=1e-6)


def test_embedding_update_looks_up_columns_of_A():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    layer = LoraLayer(emb)
    ad = Adapter(10, 4, r=2, alpha=4)
    nn.init.normal_(ad.A)
    nn.init.normal_(ad.B)
    layer.add_adapter("a", ad)
    layer.active = ["a"]
    ids = torch.tensor([[1, 2, 9]])
    expected = emb(ids) + 2.0 * (ad.B @ ad.A).T[ids]
    assert torch.allclose(layer(ids), expected, atol=1e-6)


def test_rslora_scaling_and_rank_pattern():
    model = lorakit.inject(
        tiny_llama(),
        lorakit.LoraConfig(
            r=16,
            alpha=8,
            use_rslora=True,
            target_modules=["q_proj", "v_proj"],
            rank_pattern={"layers.1.self_attn.q_proj": 4},
            alpha_pattern={"v_proj": 2},
        ),
    )
    layers = lora_layers(model)
    q0 = layers["model.layers.0.self_attn.q_proj"].adapters["default"]
    q1 = layers["model.layers.1.self_attn.q_proj"].adapters["default"]
    v0 = layers["model.layers.0.self_attn.v_proj"].adapters["default"]
    assert (q0.r, q1.r, v0.r) == (16, 4, 16)
    assert q0.scaling == pytest.approx(8 / math.sqrt(16))
    assert q1.scaling == pytest.approx(8 / 2)
    assert v0.scaling == pytest.approx(2 / 4)


def test_dropout_zero_makes_no_input_copy():
    layer = lorakit.inject(
        nn.Sequential(nn.Linear(8, 8)), lorakit.LoraConfig(r=2, target_modules=["0"])
    )[0]
    layer.train()
    seen = []
    handle = torch.nn.functional.dropout
    try:
        torch.nn.functional.dropout = lambda *a, **k: seen.append(1) or handle(*a, **k)
        layer(torch.randn(2, 8))
    finally:
        torch.nn.functional.dropout = handle
    assert seen == []


def test_dropout_applies_only_in_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    lorakit.inject(model, lorakit.LoraConfig(r=4, dropout=0.5, target_modules=["0"]))
    randomize_adapters(model)
    x = torch.randn(4, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_fp32_adapters(dtype, ids):
    model = tiny_llama().to(dtype)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    layer = lora_layers(model)["model.layers.0.self_attn.q_proj"]
    assert layer.base_layer.weight.dtype == dtype
    assert layer.adapters["default"].A.dtype == torch.float32
    randomize_adapters(model)
    out = logits(model, ids)
    assert out.dtype == dtype and torch.isfinite(out).all()
    model(ids).logits.float().sum().backward()
    assert layer.adapters["default"].B.grad is not None


def test_dora_starts_equal_to_base_and_trains_magnitude(ids):
    base = logits(tiny_llama(), ids)
    model = lorakit.inject(
        tiny_llama(), lorakit.LoraConfig(r=4, use_dora=True, target_modules=["q_proj"])
    )
    assert torch.allclose(logits(model, ids), base, atol=1e-5)
    layer = lora_layers(model)["model.layers.0.self_attn.q_proj"]
    mag = layer.adapters["default"].magnitude
    assert torch.allclose(mag, layer.base_layer.weight.norm(dim=1), atol=1e-6)
    model(ids).logits.sum().backward()
    assert mag.grad is not None and mag.grad.abs().sum() > 0


def test_pissa_init_keeps_output_and_moves_principal_part(ids):
    base_model = tiny_llama()
    base = logits(base_model, ids)
    w = base_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = lorakit.inject(
        tiny_llama(), lorakit.LoraConfig(r=4, alpha=4, init="pissa", target_modules=["q_proj"])
    )
    assert torch.allclose(logits(model, ids), base, atol=1e-5)
    layer = lora_layers(model)["model.layers.0.self_attn.q_proj"]
    s = torch.linalg.svdvals(w)
    residual = torch.linalg.svdvals(layer.base_layer.weight.detach())
    assert torch.allclose(residual[: len(s) - 4], s[4:], atol=1e-5)  # top-4 directions removed


def test_layer_forwards_attributes_of_its_base():
    model = lorakit.inject(
        tiny_llama(), lorakit.LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"])
    )
    emb = model.get_input_embeddings()
    assert isinstance(emb, LoraLayer)
    assert emb.weight is emb.base_layer.weight and emb.num_embeddings == 96
    assert model.model.layers[0].self_attn.q_proj.out_features == 32
