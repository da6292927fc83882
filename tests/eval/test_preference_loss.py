"""sequence_logps (the log-probabilities every preference number is made of) equals the
model's own logits on every head path, and the loss helpers hold at their edges."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lorakit.config import LoraConfig
from lorakit.eval.preference_loss import dpo_loss, log1mexp, sequence_logps
from lorakit.lora import inject
from lorakit.models.quantize import quantize
from tiny_tokenizer import tiny_llama


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (4, 11), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    labels[1, 8:] = -100  # padding on the right
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _from_logits(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logp = logits[:, :-1].float().log_softmax(-1)
    picked = logp.gather(2, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels != -100)).sum(1)


def _model(kind: str):
    model = tiny_llama()
    if kind == "full":  # every weight trains, the LM head too: the plain head path
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    inject(model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return quantize(model, "int8") if kind == "int8" else model


@pytest.mark.parametrize("kind", ["lora", "int8", "full"])
def test_sequence_logps_are_the_models_own(kind):
    model, batch = _model(kind), _batch()
    ours, counts = sequence_logps(model, batch)
    assert counts.tolist() == [7, 4, 7, 7]  # positions 4.. (row 1: 4..7) are predicted
    ours.sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    ref = _from_logits(model, batch)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert got and got.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in got.items():
        torch.testing.assert_close(
            grad, dict(model.named_parameters())[name].grad, atol=1e-5, rtol=1e-4
        )


def test_dpo_at_the_reference_is_log_2_whatever_the_smoothing():
    logps = torch.tensor([-3.0, -7.5])
    for s in (0.0, 0.3):
        losses, chosen, rejected = dpo_loss(logps[:1], logps[1:], logps[:1], logps[1:], 0.5, s)
        assert losses.item() == pytest.approx(math.log(2))
        assert chosen.item() == rejected.item() == 0.0
    # smoothing pulls the loss of a confident, right pair up: it might be mislabelled
    plain, *_ = dpo_loss(
        torch.tensor([0.0]), torch.tensor([-20.0]), torch.zeros(1), torch.zeros(1), 0.5
    )
    smooth, *_ = dpo_loss(
        torch.tensor([0.0]), torch.tensor([-20.0]), torch.zeros(1), torch.zeros(1), 0.5, 0.1
    )
    margin = torch.tensor(10.0)  # beta * 20
    expected = 0.9 * -F.logsigmoid(margin) + 0.1 * -F.logsigmoid(-margin)
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-6)
    assert smooth > plain


def test_log1mexp_is_stable_on_both_sides():
    x = torch.tensor([-50.0, -5.0, -0.7, -0.69, -1e-3, -1e-8], dtype=torch.float32)
    exact = torch.log(-torch.expm1(x.double()))
    torch.testing.assert_close(log1mexp(x).double(), exact, rtol=1e-5, atol=1e-12)
    assert torch.isfinite(log1mexp(x)).all()
    assert not torch.isfinite(torch.log1p(-torch.exp(x[-1:]))).all()  # why it branches
