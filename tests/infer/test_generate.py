"""lorakit's batch-1 decode loop (infer/generate.py) on the tiny Llama with an adapter:
greedy ids equal transformers' `generate` (an independent implementation), an end id
stops it, a seed fixes a sampled text, and the streamed pieces join to the decoded ids."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import lorakit
from lorakit.infer.generate import cache_kwarg, decode, encode_prompt, eos_ids, stream
from lorakit.infer.load import load_for_inference
from tiny_models import randomize_adapters


@pytest.fixture(scope="module")
def adapted(llama_model_dir):
    model, tokenizer, _, _ = load_for_inference(str(llama_model_dir))
    torch.manual_seed(0)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomize_adapters(model)
    return model.eval(), tokenizer


PROMPT = "Tell me about the sea."


def _reference(model, ids: list[int], tokens: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # no end id: the whole budget, as decode with eos={}
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def test_greedy_ids_equal_transformers_generate(adapted):
    model, tokenizer = adapted
    ids = encode_prompt(tokenizer, PROMPT)
    mine = list(decode(model, ids, 24, eos=set()))
    assert len(mine) == 24
    assert mine == _reference(model, ids, 24)


def test_an_end_id_stops_and_is_not_yielded(adapted):
    model, tokenizer = adapted
    ids = encode_prompt(tokenizer, PROMPT)
    free = list(decode(model, ids, 12, eos=set()))
    stop = free[5]
    first = free.index(stop)
    assert list(decode(model, ids, 12, eos={stop})) == free[:first]
    assert eos_ids(model, tokenizer) >= {tokenizer.eos_token_id}


def test_a_seed_fixes_the_sampled_ids(adapted):
    model, tokenizer = adapted
    ids = encode_prompt(tokenizer, PROMPT)
    run = lambda seed: list(decode(model, ids, 16, set(), 1.0, 1.0, seed))  # noqa: E731
    assert run(3) == run(3)
    assert len({tuple(run(s)) for s in (3, 4, 5)}) == 3
    assert run(3) != list(decode(model, ids, 16, eos=set()))  # sampling, not greedy
    tiny_p = list(decode(model, ids, 16, set(), 1.0, 1e-9, 3))  # only the top token is left
    assert tiny_p == list(decode(model, ids, 16, eos=set()))


def test_stream_pieces_join_to_the_decoded_ids(adapted):
    model, tokenizer = adapted
    pieces = list(stream(model, tokenizer, PROMPT, max_new_tokens=20))
    ids = list(decode(model, encode_prompt(tokenizer, PROMPT), 20, eos_ids(model, tokenizer)))
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert len(pieces) > 1  # streamed, not one block at the end


def test_the_cache_goes_under_the_forwards_own_name(adapted):
    # transformers 5.25 renamed past_key_values to cache (the old name warns, and goes in
    # 5.40); decode must use whichever this transformers' forward declares
    model, tokenizer = adapted
    name = cache_kwarg(model)
    assert name in inspect.signature(model.forward).parameters
    ids = encode_prompt(tokenizer, PROMPT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        mine = list(decode(model, ids, 6, eos=set()))
    assert mine == _reference(model, ids, 6)
