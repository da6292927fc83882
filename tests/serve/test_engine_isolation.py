"""One row's fault is that row's error alone: the engine on tiny random models, with faults
that real requests and adapters cause (positions past a learned-position table, an adapter
whose weights overflow, a client callback that raises, deadlines, a stuck engine)."""

import threading
import time

import pytest
import torch

import lorakit
from engine_hold import held
from lorakit.serve.engine import Engine, EngineBusy, Request
from tiny_models import randomize_adapters, tiny_gpt2, tiny_llama
from tiny_tokenizer import make_tokenizer

TOK = make_tokenizer()


class Waiter:
    def __init__(self, fail_after: int | None = None):
        self.events, self.done, self.fail_after = [], threading.Event(), fail_after

    def __call__(self, event):
        self.events.append(event)
        if event.finish_reason:
            self.done.set()
        if self.fail_after is not None and len(self.events) > self.fail_after:
            raise RuntimeError("this client's connection broke")


def _job(prompt, adapter=None, max_tokens=8, waiter=None, **kw):
    waiter = waiter or Waiter()
    return Request(prompt, adapter, max_tokens, emit=waiter, **kw), waiter


def _model(factory, adapters=("a", "b")):
    model = factory()
    for i, name in enumerate(adapters):
        lorakit.inject(model, lorakit.LoraConfig(r=4, alpha=8), adapter=name)
        randomize_adapters(model, std=0.3, seed=i + 1)
    return model


def _run(engine, jobs, timeout=60):
    for req, _ in jobs:
        engine.submit(req)
    for _, waiter in jobs:
        assert waiter.done.wait(timeout)
    return [req.generated for req, _ in jobs]


def _prompts(*lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 90, (n,), generator=gen).tolist() for n in lengths]


def test_a_row_failing_in_prefill_or_decode_fails_alone():
    # GPT-2 has 64 learned positions: a 70-token prompt fails in prefill, a 62-token one
    # fails in decode at position 64 — real faults inside the model's forward
    engine = Engine(_model(tiny_gpt2), TOK, max_batch_size=8)
    engine.eos = set()
    good = [(p, a) for p, a in zip(_prompts(5, 9, 3), ["a", None, "b"], strict=True)]
    try:
        alone = [_run(engine, [_job(p, a)])[0] for p, a in good]
        jobs = [_job(p, a) for p, a in good]
        in_prefill = _job(_prompts(70, seed=1)[0], "a")
        in_decode = _job(_prompts(62, seed=2)[0], "b", max_tokens=8)
        together = _run(engine, [jobs[0], in_prefill, jobs[1], in_decode, jobs[2]])
        after = _run(engine, [_job(p, a) for p, a in good])  # the engine serves on
    finally:
        engine.close()
    assert [together[0], together[2], together[4]] == alone == after
    for (req, waiter), generated in ((in_prefill, 0), (in_decode, 3)):
        last = waiter.events[-1]
        assert last.finish_reason == "error" and last.status == 500, last
        assert (
            len(req.generated) == generated
        )  # decode failed feeding its third token (position 64)


def test_non_finite_logits_end_that_row_only():
    model = _model(tiny_llama, adapters=("a", "broken"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".broken." in name and name.endswith(".B"):
                p.fill_(float("inf"))
    engine = Engine(model, TOK, max_batch_size=8)
    engine.eos = set()
    prompts = _prompts(4, 7)
    try:
        alone = [_run(engine, [_job(p, "a")])[0] for p in prompts]
        jobs = [_job(prompts[0], "a"), _job(prompts[1], "broken"), _job(prompts[1], "a")]
        together = _run(engine, jobs)
    finally:
        engine.close()
    assert [together[0], together[2]] == alone
    last = jobs[1][1].events[-1]
    assert (last.finish_reason, last.status, last.code) == ("error", 422, "non_finite_logits")


def test_tiny_temperature_is_greedy_not_an_error():
    engine = Engine(_model(tiny_llama), TOK)
    engine.eos = set()
    prompt = _prompts(6)[0]
    try:
        greedy = _run(engine, [_job(prompt, "a")])[0]
        cold = _run(engine, [_job(prompt, "a", temperature=1e-30, seed=2**64 - 1)])[0]
    finally:
        engine.close()
    assert cold == greedy


def test_a_client_whose_callback_raises_loses_only_its_own_row():
    engine = Engine(_model(tiny_llama), TOK, max_batch_size=4)
    engine.eos = set()
    prompts = _prompts(5, 8)
    try:
        alone = _run(engine, [_job(prompts[0], "b", max_tokens=12)])[0]
        broken = _job(prompts[1], "a", max_tokens=12, waiter=Waiter(fail_after=2))
        kept = _job(prompts[0], "b", max_tokens=12)
        engine.submit(broken[0])
        assert _run(engine, [kept])[0] == alone
    finally:
        engine.close()
    assert broken[0].cancelled and len(broken[0].generated) < 12


def test_deadline_ends_a_request_with_408_and_others_go_on():
    engine = Engine(_model(tiny_llama), TOK)
    engine.eos = set()
    try:
        slow, waiter = _job([1, 2, 3], "a", max_tokens=10_000, timeout=0.3)
        quick = _job([4, 5, 6], None, max_tokens=4)
        _run(engine, [(slow, waiter), quick])
    finally:
        engine.close()
    last = waiter.events[-1]
    assert (last.finish_reason, last.status, last.code) == ("error", 408, "request_timeout")
    assert 0 < len(slow.generated) < 10_000
    assert len(quick[0].generated) == 4


def test_health_reports_a_stuck_engine_and_changes_can_time_out():
    engine = Engine(_model(tiny_llama), TOK)
    ran = []
    try:
        with held(engine):
            assert engine.health(stall_seconds=60) == (True, "")
            req, waiter = _job([1, 2], None, max_tokens=2)
            engine.submit(req)
            time.sleep(0.3)
            alive, why = engine.health(stall_seconds=0.2)
            assert not alive and "no progress" in why
            with pytest.raises(EngineBusy, match="retry later"):
                engine.call(lambda: ran.append(1), timeout=0.2)
        assert waiter.done.wait(30)
        deadline = time.time() + 10
        while not engine.health(stall_seconds=0.2)[0] and time.time() < deadline:
            time.sleep(0.01)
        assert engine.health(stall_seconds=0.2)[0]  # progress again: healthy again
        assert engine.call(lambda: 7) == 7 and ran == []  # the abandoned change never ran
    finally:
        engine.close()
    assert engine.health(stall_seconds=60) == (False, "the engine thread has stopped")


def test_a_request_for_an_adapter_unloaded_while_it_waited_gets_404():
    model = _model(tiny_llama)
    engine = Engine(model, TOK)
    try:
        with held(engine):
            req, waiter = _job([1, 2, 3], "b", max_tokens=3)
            other = _job([1, 2, 3], "a", max_tokens=3)
            engine.submit(req)
            engine.submit(other[0])
            assert engine.uses("b") == 1
            lorakit.delete_adapter(model, "b")  # what an unload does, had it won the race
        assert waiter.done.wait(30) and other[1].done.wait(30)
    finally:
        engine.close()
    assert (waiter.events[-1].status, waiter.events[-1].code) == (404, "model_not_found")
    assert len(other[0].generated) == 3
