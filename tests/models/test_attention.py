"""bf16 training's attention on a CPU: torch's SDPA with q, k, v upcast to fp32, per model."""

from __future__ import annotations

import pytest
import torch

from lorakit.models.attention import NAME, use_fp32_attention
from tiny_models import VOCAB, rel_error, tiny_bert_cls, tiny_llama

IDS = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(3, 11, dtype=torch.long)
MASK[1, 7:] = 0  # a padded row: the mask must reach the attention as it does in stock sdpa


def _pair(make):
    torch.manual_seed(0)
    stock = make().to(torch.bfloat16)
    upcast = make().to(torch.bfloat16)
    upcast.load_state_dict(stock.state_dict())
    return stock, upcast


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert_cls], ids=["llama", "bert"])
def test_upcast_attention_matches_stock_sdpa_and_leaves_other_models_alone(make):
    stock, upcast = _pair(make)
    assert stock.config._attn_implementation == "sdpa"
    assert use_fp32_attention(upcast)
    assert upcast.config._attn_implementation == NAME
    assert stock.config._attn_implementation == "sdpa"  # another instance is unchanged
    reference = make()  # fp32: what both bf16 models approximate
    reference.load_state_dict({k: v.float() for k, v in stock.state_dict().items()})
    out = {}
    for name, model in (("stock", stock), ("upcast", upcast), ("fp32", reference)):
        logits = model(input_ids=IDS, attention_mask=MASK).logits
        logits.float().square().mean().backward()
        grad = next(p for p in model.parameters() if p.grad is not None).grad
        out[name] = (logits.float().detach(), grad.float())
    assert out["upcast"][0].dtype == torch.float32 and stock(IDS).logits.dtype == torch.bfloat16
    # the upcast model is at least as close to fp32 as stock bf16 SDPA, and both are close
    for i in (0, 1):
        up, st = (
            rel_error(out["upcast"][i], out["fp32"][i]),
            rel_error(out["stock"][i], out["fp32"][i]),
        )
        assert up < 0.05 and st < 0.05 and up <= st * 1.5 + 1e-3


def test_models_not_on_sdpa_are_left_alone():
    eager = tiny_llama()
    eager.set_attn_implementation("eager")
    assert not use_fp32_attention(eager)
    assert eager.config._attn_implementation == "eager"
    assert not use_fp32_attention(torch.nn.Linear(2, 2))
