"""Activation checkpointing: same training, less saved activation memory, clear refusal."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lorakit.config import TrainConfig
from lorakit.errors import ConfigError
from lorakit.eval.loss import causal_lm_loss
from lorakit.models.load import load_model
from lorakit.train import train
from lorakit.train.method import apply_method, enable_activation_checkpointing


def _lm_config(tmp_path, llama_dir, jsonl, name, **kw):
    return TrainConfig(
        model=str(llama_dir),
        task="causal-lm",
        data=str(jsonl),
        output=str(tmp_path / name),
        max_steps=4,
        batch_size=4,
        lr=1e-2,
        dropout=0.1,  # LoRA dropout and the model's own: recomputation must replay the masks
        model_dropout=0.1,
        max_eval_samples=2,
        device="cpu",
        **kw,
    )


def _adapter(out) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_checkpointed_training_gives_the_same_adapter(
    tmp_path, llama_model_dir, qa_jsonl, quantize
):
    quiet = dict(progress=False, log=lambda *a: None)
    plain = _lm_config(tmp_path, llama_model_dir, qa_jsonl, "plain", quantize=quantize)
    ckpt = _lm_config(
        tmp_path,
        llama_model_dir,
        qa_jsonl,
        "ckpt",
        quantize=quantize,
        activation_checkpointing=True,
    )
    a, b = train(plain, **quiet), train(ckpt, **quiet)
    A, B = _adapter(tmp_path / "plain"), _adapter(tmp_path / "ckpt")
    assert A.keys() == B.keys()
    assert max(t.abs().max().item() for k, t in A.items() if "lora_B" in k) > 1e-3  # it trained
    assert max((A[k] - B[k]).abs().max().item() for k in A) <= 1e-6
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=1e-6)


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward during one forward (what checkpointing cuts)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = causal_lm_loss(model, batch)
    loss.backward()
    return total


def test_checkpointing_keeps_far_fewer_activations(llama_model_dir):
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (4, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    saved = {}
    for on in (False, True):
        model, _ = load_model(str(llama_model_dir), "causal-lm")
        config = TrainConfig(
            model=str(llama_model_dir), task="causal-lm", activation_checkpointing=on
        )
        apply_method(model, config)
        model.train()
        saved[on] = _saved_bytes(model, batch)
    # each layer keeps its input only, instead of every intermediate of attention and MLP
    assert saved[True] < 0.3 * saved[False], saved


def test_a_model_without_support_is_refused():
    with pytest.raises(ConfigError, match="does not support activation checkpointing"):
        enable_activation_checkpointing(nn.Sequential(nn.Linear(4, 4)))
