"""The continuous-batching engine on tiny random models: every request gets exactly the
tokens it gets alone, whatever joins or leaves the batch around it."""

import threading

import pytest
import torch

import lorakit
from lorakit.serve.engine import AdapterGone, Engine, QueueFull, Request
from tiny_models import randomize_adapters, tiny_gpt2, tiny_llama, tiny_opt
from tiny_tokenizer import make_tokenizer

TOK = make_tokenizer()


def _model(factory, adapters=("a", "b")):
    model = factory()
    for i, name in enumerate(adapters):
        # the model's default targets (attention) and all-linear: banks of several shapes
        cfg = (
            lorakit.LoraConfig(r=4 + i, alpha=8, target_modules="all-linear")
            if i % 2
            else lorakit.LoraConfig(r=4, alpha=8)
        )
        lorakit.inject(model, cfg, adapter=name)
        randomize_adapters(model, std=0.3, seed=i + 1)
    return model


class Waiter:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event.finish_reason:
            self.done.set()


def _request(prompt, adapter, max_tokens=8, **kw):
    waiter = Waiter()
    return Request(
        prompt_ids=prompt, adapter=adapter, max_tokens=max_tokens, emit=waiter, **kw
    ), waiter


def _generate(engine, jobs):
    reqs = [_request(*job) for job in jobs]
    for req, _ in reqs:
        engine.submit(req)
    for _, waiter in reqs:
        assert waiter.done.wait(60)
    return [req.generated for req, _ in reqs]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2, tiny_opt])
def test_batched_requests_equal_each_alone(factory):
    engine = Engine(_model(factory), TOK, max_batch_size=8)
    engine.eos = set()  # run every request to max_tokens: longer sequences to compare
    torch.manual_seed(0)
    prompts = [torch.randint(3, 90, (n,)).tolist() for n in (3, 9, 5, 12, 1)]
    jobs = [(p, name) for p, name in zip(prompts, ["a", None, "b", "a", "b"], strict=True)]
    try:
        together = _generate(engine, jobs)
        alone = [_generate(engine, [job])[0] for job in jobs]
    finally:
        engine.close()
    assert together == alone
    assert all(len(g) == 8 for g in together)
    # the adapters matter: same prompt, three different continuations
    same = [(prompts[1], n) for n in (None, "a", "b")]
    engine = Engine(_model(factory), TOK)
    try:
        outs = _generate(engine, same)
    finally:
        engine.close()
    assert len({tuple(o) for o in outs}) == 3


def test_requests_joining_and_leaving_mid_stream_keep_their_tokens():
    engine = Engine(_model(tiny_llama), TOK, max_batch_size=3)
    torch.manual_seed(1)
    long, waiter = _request(torch.randint(3, 90, (6,)).tolist(), "a", max_tokens=30)
    others = [
        (torch.randint(3, 90, (n,)).tolist(), name, 3 + n)
        for n, name in [(2, "b"), (11, None), (4, "a"), (7, "b")]
    ]
    try:
        engine.submit(long)
        while len(long.generated) < 5:  # joins happen while `long` is decoding
            threading.Event().wait(0.001)
        mid = _generate(engine, others)  # 4 requests, batch of 3: one waits for a free row
        assert waiter.done.wait(60)
        alone_long = _generate(engine, [(long.prompt_ids, "a", 30)])[0]
        alone = [_generate(engine, [job])[0] for job in others]
    finally:
        engine.close()
    assert long.generated == alone_long
    assert mid == alone


def test_finish_reasons_usage_and_cancel():
    model = _model(tiny_llama)
    engine = Engine(model, TOK)
    try:
        req, waiter = _request([5, 6, 7], "a", max_tokens=4)
        engine.submit(req)
        assert waiter.done.wait(30)
        last = waiter.events[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 3, 4)
        # a request whose first token is EOS stops there: make EOS the model's choice
        first = req.generated[0]
        engine.eos = {first}
        req2, waiter2 = _request([5, 6, 7], "a", max_tokens=4)
        engine.submit(req2)
        assert waiter2.done.wait(30)
        assert waiter2.events[-1].finish_reason == "stop" and req2.generated == [first]
        engine.eos = set()
        req3, waiter3 = _request([1, 2], None, max_tokens=200)
        engine.submit(req3)
        req3.cancelled = True
        assert waiter3.done.wait(30)
        assert len(req3.generated) < 200
    finally:
        engine.close()


def test_seeded_sampling_is_reproducible_in_any_batch():
    engine = Engine(_model(tiny_llama), TOK)
    job = ([4, 8, 15, 16], "b", 12)
    try:
        r1, w1 = _request(*job, temperature=1.0, top_p=0.9, seed=7)
        r2, w2 = _request(*job, temperature=1.0, top_p=0.9, seed=7)
        r3, w3 = _request(*job, temperature=1.0, top_p=0.9, seed=8)
        engine.submit(r1)
        assert w1.done.wait(30)
        engine.submit(r2)
        engine.submit(r3)
        assert w2.done.wait(30) and w3.done.wait(30)
    finally:
        engine.close()
    assert r1.generated == r2.generated != r3.generated


def test_full_queue_is_refused_and_calls_run_between_steps():
    engine = Engine(_model(tiny_llama), TOK, max_queue=2)
    gate, entered = threading.Event(), threading.Event()

    def block():  # holds the engine thread: nothing is admitted meanwhile
        entered.set()
        gate.wait()

    blocker = threading.Thread(target=engine.call, args=(block,))
    blocker.start()
    try:
        assert entered.wait(10)
        reqs = [_request([1, 2, 3], None, 2) for _ in range(2)]
        for req, _ in reqs:
            engine.submit(req)
        with pytest.raises(QueueFull, match="queue is full"):
            engine.submit(_request([1, 2, 3], None, 2)[0])
        gate.set()
        for _, waiter in reqs:
            assert waiter.done.wait(30)
        assert engine.call(lambda: 42) == 42
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
    finally:
        gate.set()
        engine.close()


def test_unload_counts_and_removes_under_the_queue_lock():
    """An adapter in use is not removed; once removed, a request still naming it (resolved
    before the unload) is refused by submit, before any response could start, instead of
    failing inside a stream that already said 200."""
    model = _model(tiny_llama)
    engine = Engine(model, TOK)
    engine.eos = set()
    try:
        busy, waiter = _request([5, 6, 7], "a", max_tokens=40)
        engine.submit(busy)
        removed = []
        assert engine.call(lambda: engine.unload_if_unused("a", lambda: removed.append("a"))) >= 1
        assert waiter.done.wait(60) and not removed
        assert (
            engine.call(
                lambda: engine.unload_if_unused("b", lambda: lorakit.delete_adapter(model, "b"))
            )
            == 0
        )
        late, late_waiter = _request([5, 6, 7], "b")
        with pytest.raises(AdapterGone, match="'b' was unloaded"):
            engine.submit(late)
        assert late_waiter.events == []  # never queued: nothing was emitted
        assert engine.uses("b") == 0
    finally:
        engine.close()
