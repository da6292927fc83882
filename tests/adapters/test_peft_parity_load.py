"""peft → lorakit: adapters peft writes load with the same logits; weighted combinations and
print_trainable_parameters agree with peft's (tiny random models, fp32; one real MiniLM check)."""

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
)
from tiny_models import logits, randomize_adapters

pytestmark = [  # peft's notes on offline lookups and transformers deprecations, not findings
    pytest.mark.filterwarnings("ignore::UserWarning:peft"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_peft_adapter_loads_in_lorakit_with_same_logits(arch, variant, ids, tmp_path):
    pmodel = peft.get_peft_model(base(arch), peft_config(arch, variant, init_lora_weights=False))
    randomize_adapters(pmodel, std=0.05)  # also moves DoRA magnitudes, trained biases, heads
    expected = logits(pmodel, ids)
    assert_differs(expected, logits(base(arch), ids))
    pmodel.save_pretrained(tmp_path / "adapter")

    fresh = base(arch)
    assert lorakit.load_adapter(fresh, tmp_path / "adapter") == "default"
    assert_close(logits(fresh, ids), expected)


# name: (arch, method, weights, (r, alpha, targets) of adapter "a", the same of "b")
QV, QE, VE = ["q_proj", "v_proj"], ["q_proj", "embed_tokens"], ["v_proj", "embed_tokens"]
COMBOS = {
    "linear": ("llama", "linear", [0.7, 0.3], (4, 8, QV), (4, 4, QV)),
    "linear_negative": ("llama", "linear", [1.2, -0.5], (4, 8, QV), (4, 12, QV)),
    "linear_embedding": ("llama", "linear", [0.7, 0.3], (4, 8, QE), (4, 4, QE)),
    "linear_conv1d": ("gpt2", "linear", [0.5, 0.5], (4, 8, ["c_attn", "c_fc"]), (4, 16, ["c_fc"])),
    "cat": ("llama", "cat", [0.7, 0.3], (4, 8, QV), (2, 6, QV)),
    "cat_other_targets": ("llama", "cat", [0.6, 0.9], (4, 8, QV), (2, 6, ["q_proj", "o_proj"])),
    "cat_embedding": ("llama", "cat", [0.7, -0.3], (4, 8, VE), (2, 6, VE)),
    "cat_conv1d": ("gpt2", "cat", [0.5, -0.4], (4, 8, ["c_attn"]), (2, 6, ["c_attn", "c_proj"])),
}


@pytest.mark.parametrize("combo", list(COMBOS))
def test_add_weighted_adapter_matches_peft(combo, ids, tmp_path):
    arch, method, weights, *specs = COMBOS[combo]
    extra = {"task_type": ARCHS[arch]["task_type"], **ARCHS[arch].get("peft_extra", {})}
    configs = [
        peft.LoraConfig(
            r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **extra
        )
        for r, alpha, targets in specs
    ]
    pmodel = peft.get_peft_model(base(arch), configs[0], adapter_name="a")
    pmodel.add_adapter("b", configs[1])
    pmodel.save_pretrained(tmp_path)  # adapters not named "default" go to tmp_path / name
    ours = base(arch)
    for name in ("a", "b"):
        lorakit.load_adapter(ours, tmp_path / name, name)
        pmodel.set_adapter(name)
        lorakit.set_adapter(ours, name)
        assert_close(logits(ours, ids), logits(pmodel, ids))

    pmodel.add_weighted_adapter(["a", "b"], weights, "combo", combination_type=method)
    lorakit.add_weighted_adapter(
        ours, dict(zip("ab", weights, strict=True)), "combo", method=method
    )
    pmodel.set_adapter("combo")
    lorakit.set_adapter(ours, "combo")
    expected = logits(pmodel, ids)
    assert_differs(expected, logits(base(arch), ids))
    assert_close(logits(ours, ids), expected)


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_trainable_parameters_line_matches_peft(arch, variant, capsys):
    lorakit.print_trainable_parameters(lorakit.inject(base(arch), lorakit_config(arch, variant)))
    ours = capsys.readouterr().out
    peft.get_peft_model(base(arch), peft_config(arch, variant)).print_trainable_parameters()
    theirs = capsys.readouterr().out
    assert ours.startswith("trainable params: ")
    assert ours == theirs


def _minilm():
    from transformers import AutoModelForSequenceClassification

    from lorakit.models.paths import alias_path

    path = alias_path("minilm")  # the packaged default; located, never imported
    torch.manual_seed(0)  # the new classifier head
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)


def test_trainable_parameters_line_matches_peft_on_minilm(capsys):
    targets = ["query", "key", "value", "attention.output.dense"]
    config = lorakit.LoraConfig(
        r=4, alpha=32, target_modules=targets, modules_to_save=["classifier"]
    )
    lorakit.print_trainable_parameters(lorakit.inject(_minilm(), config))
    ours = capsys.readouterr().out
    pconfig = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=32, target_modules=targets)
    peft.get_peft_model(_minilm(), pconfig).print_trainable_parameters()
    theirs = capsys.readouterr().out
    # 6 layers x 4 modules x (A [4, 384] + B [384, 4]) + the head copy (384 x 3 + 3); all params
    # also count the original head, as peft's wrapper holds both
    line = "trainable params: 74,883 || all params: 22,789,254 || trainable%: 0.3286\n"
    assert ours == theirs == line
