"""The soak: many clients against one `lorakit serve` process for a while, counting every
answer. Shared by tests/reliability/test_soak.py (bounded, in CI) and benchmarks/soak.py
(longer, prints a table for BENCHMARKS.md).

Three kinds of client run at once:
- `clients` greedy clients: requests whose answer is known (temperature 0, recorded alone
  before the load), on the base and every adapter, completions and chat, plain, streamed,
  or streamed and closed after a few chunks; each answer must equal its solo answer (a
  cancelled stream: be a prefix of it);
- one loader: loads the "extra" adapter, asks it a known request, unloads it (a 409
  adapter_in_use is a fair answer: retry), then the same directory as "churn", over and
  over; the greedy clients also ask "extra" now and then (a 404 while it is unloaded is
  a fair answer);
- one hostile client: malformed, mistyped, oversized and otherwise nasty requests, each of
  which must get a 4xx (or a 200 where the request is valid), never a 5xx.
Every 5xx (as a status or as an error event inside a stream), dropped connection, timeout,
unexpected status and changed token is recorded with the request and the answer.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from reliability.hostile_bodies import hostile_requests
from reliability.server_fixtures import proc_status_mb as rss_mb

PROMPTS = [
    "Tell me about cats.",
    "What is 2+2?",
    "Write a haiku about rain.",
    "Name a color.",
    "The capital of France is",
    "def fib(n):",
]
EXTRA_DIR = "extra"  # the directory (under --adapter-dir) of the adapter the loader loads
# ... and the name it loads it under: not the directory's, which a request would load on
# first use (so it could never be unloaded for long)
EXTRA = "extra-live"
CHURN = "churn"  # the same directory under a name only the loader uses
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class Job:
    """A greedy request with a known answer."""

    chat: bool
    model: str
    prompt: str
    max_tokens: int
    stop: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    def body(self, stream: bool = False) -> dict:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0}
        if self.chat:
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if self.stop:
            body["stop"] = list(self.stop)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def label(self) -> str:
        kind = "chat" if self.chat else "completion"
        return f"{kind} {self.model} {self.prompt!r} max_tokens={self.max_tokens} stop={list(self.stop)}"


@dataclass
class Answer:
    status: int
    text: str = ""
    finish: str | None = None
    error: str | None = None  # an error event inside a 200 stream
    done: bool = False  # a stream reached [DONE]
    raw: str = ""


def jobs_for(models: list[str], max_tokens: int) -> list[Job]:
    jobs = []
    for i, prompt in enumerate(PROMPTS):
        for j, model in enumerate(models):
            stop = ("zz", "\n\n") if (i + j) % 3 == 0 else ()
            tokens = max_tokens - 4 * ((i + j) % 3)
            jobs += [Job(False, model, prompt, tokens, stop), Job(True, model, prompt, tokens)]
    return jobs


def ask(client: httpx.Client, job: Job, stream: bool, cancel_after: int | None = None) -> Answer:
    """Send a job; streamed answers are parsed from the SSE lines. `cancel_after`: close
    the stream after that many text chunks."""
    if not stream:
        r = client.post(job.path, json=job.body())
        if r.status_code != 200:
            return Answer(r.status_code, raw=r.text[:300])
        choice = r.json()["choices"][0]
        text = choice["message"]["content"] if job.chat else choice["text"]
        return Answer(200, text, choice["finish_reason"], done=True)
    with client.stream("POST", job.path, json=job.body(stream=True)) as r:
        if r.status_code != 200:
            r.read()
            return Answer(r.status_code, raw=r.text[:300])
        answer, pieces = Answer(200), 0
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                answer.done = True
                break
            event = json.loads(data)
            if "error" in event:
                answer.error = json.dumps(event["error"])[:300]
                continue
            for choice in event.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") if job.chat else choice["text"]
                if piece:
                    answer.text += piece
                    pieces += 1
                answer.finish = choice.get("finish_reason") or answer.finish
            if cancel_after is not None and pieces >= cancel_after:
                break  # leaving the block closes the connection mid-stream
        return answer


@dataclass
class Tally:
    """Counts and failures, shared by every client thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)  # (client kind, status)
    hostile: dict[str, Counter] = field(default_factory=dict)  # name -> statuses
    failures: dict[str, list] = field(default_factory=dict)  # kind -> [count, first example]

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def status(self, kind: str, status: int | str) -> None:
        with self.lock:
            self.counts["requests"] += 1
            self.statuses[(kind, status)] += 1

    def fail(self, kind: str, example: str) -> None:
        with self.lock:
            entry = self.failures.setdefault(kind, [0, example])
            entry[0] += 1


@dataclass
class Report:
    seconds: float
    clients: int
    counts: dict
    statuses: dict
    hostile: dict
    failures: dict
    rss_mb: dict

    def summary(self) -> str:
        lines = [f"soak: {self.seconds:.0f}s, {self.clients} greedy clients + loader + hostile"]
        lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        lines.append("statuses: " + ", ".join(f"{k}:{s}={n}" for (k, s), n in sorted(self.statuses.items(), key=str)))  # fmt: skip
        lines.append("hostile answers: " + "; ".join(f"{name} {dict(sorted(c.items()))}" for name, c in self.hostile.items()))  # fmt: skip
        lines.append("rss MB: " + ", ".join(f"{k}={v:.0f}" for k, v in self.rss_mb.items()))
        lines.append(f"failures: {sum(n for n, _ in self.failures.values())}")
        for kind, (n, example) in self.failures.items():
            lines.append(f"  [{n}x] {kind}\n        {example}")
        return "\n".join(lines)

    def markdown(self) -> str:
        c = self.counts
        rows = [
            ("duration (s)", f"{self.seconds:.0f}"),
            ("greedy clients", self.clients),
            ("requests", c.get("requests", 0)),
            ("greedy answers checked", c.get("checked", 0)),
            ("streams / cancelled mid-stream", f"{c.get('streams', 0)} / {c.get('cancels', 0)}"),
            (
                "adapter loads / unloads / 409 in use",
                f"{c.get('loads', 0)} / {c.get('unloads', 0)} / {c.get('unload_busy', 0)}",
            ),
            ("hostile requests", c.get("hostile", 0)),
            (
                "5xx",
                sum(n for (_, s), n in self.statuses.items() if isinstance(s, int) and s >= 500),
            ),
            ("errors inside streams", c.get("stream_errors", 0)),
            ("dropped connections / timeouts", c.get("dropped", 0)),
            ("changed greedy answers", c.get("mismatches", 0)),
            (
                "server RSS MB: start / warm / peak / end",
                " / ".join(f"{self.rss_mb[k]:.0f}" for k in ("start", "warm", "peak", "end")),
            ),
        ]
        out = ["| soak | value |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(out)


class Soak:
    def __init__(
        self,
        url: str,
        headers: dict,
        pid: int,
        base: str,
        adapters: list[str],
        allowed: Path,
        key: str,
        clients: int = 32,
        max_tokens: int = 24,
        seed: int = 0,
    ):
        self.url, self.headers, self.pid = url, headers, pid
        self.base, self.adapters, self.allowed, self.key = base, adapters, allowed, key
        self.clients, self.seed = clients, seed
        self.jobs = jobs_for([base, *adapters], max_tokens)
        self.extra_jobs = [Job(False, EXTRA, PROMPTS[0], max_tokens), Job(True, EXTRA, PROMPTS[1], max_tokens)]  # fmt: skip
        self.solo: dict[Job, Answer] = {}
        self.tally = Tally()
        self.stop_at = 0.0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=TIMEOUT)

    # -- before the load -------------------------------------------------------------------------
    def record_solo(self) -> None:
        """Every known request alone (one at a time), and the extra adapter's while loaded."""
        with self.client() as c:
            for job in self.jobs:
                self.solo[job] = self._solo(c, job)
            body = {"lora_name": EXTRA, "lora_path": str(self.allowed / EXTRA_DIR)}
            r = c.post("/v1/load_lora_adapter", json=body)
            assert r.status_code == 200, r.text
            for job in self.extra_jobs:
                self.solo[job] = self._solo(c, job)
                self.solo[replace(job, model=CHURN)] = self.solo[job]  # same weights
            r = c.post("/v1/unload_lora_adapter", json={"lora_name": EXTRA})
            assert r.status_code == 200, r.text
        texts = {(j.model, j.chat, j.prompt): a.text for j, a in self.solo.items()}
        for prompt in PROMPTS:  # the adapters must change the answer, or the test is blind
            answers = {texts[(m, False, prompt)] for m in [self.base, *self.adapters]}
            assert len(answers) == 1 + len(self.adapters), f"adapters agree on {prompt!r}"

    def _solo(self, c: httpx.Client, job: Job) -> Answer:
        answer = ask(c, job, stream=False)
        assert answer.status == 200, f"{job.label()} -> {answer.status} {answer.raw}"
        assert answer.text, f"{job.label()} gave no text"
        return answer

    # -- the load ---------------------------------------------------------------------------------
    def run(self, seconds: float, warmup: float = 5.0) -> Report:
        rss = {"start": rss_mb(self.pid)}
        if warmup > 0:  # same load, not counted: caches and allocator pools reach their size
            self._phase(warmup, Tally())
        self._idle()
        rss["warm"] = rss_mb(self.pid)
        peak = [rss["warm"]]
        start = time.perf_counter()
        self._phase(seconds, self.tally, peak)
        elapsed = time.perf_counter() - start
        self._idle()
        rss["peak"] = max(peak)
        rss["end"] = rss_mb(self.pid)
        t = self.tally
        return Report(elapsed, self.clients, dict(t.counts), dict(t.statuses),
                      {k: dict(v) for k, v in t.hostile.items()}, dict(t.failures), rss)  # fmt: skip

    def _phase(self, seconds: float, tally: Tally, peak: list | None = None) -> None:
        self.tally, self.stop_at = tally, time.perf_counter() + seconds
        threads = [threading.Thread(target=self._greedy, args=(i,)) for i in range(self.clients)]
        threads += [threading.Thread(target=self._loader), threading.Thread(target=self._hostile)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            if peak is not None:
                peak.append(rss_mb(self.pid))
            time.sleep(0.5)
        for th in threads:
            th.join()

    def _idle(self, timeout: float = 60) -> None:
        """Wait until the server has nothing waiting or running (cancelled rows freed)."""
        deadline = time.time() + timeout
        with self.client() as c:
            while time.time() < deadline:
                health = c.get("/health").json()
                if health.get("waiting", 0) == 0 and health.get("running", 0) == 0:
                    break
                time.sleep(0.2)
        time.sleep(1.0)

    def _check(self, kind: str, label: str, call, *args) -> Answer | None:
        """Run one request; count it; record a 5xx, a dropped connection or a timeout."""
        t = self.tally
        try:
            answer = call(*args)
        except httpx.TransportError as exc:  # reset, refused, closed mid-body, timeout
            t.status(kind, "dropped")
            t.count("dropped")
            t.fail(f"{kind}: dropped connection ({type(exc).__name__})", f"{label}: {exc!r}")
            return None
        t.status(kind, answer.status)
        if answer.status >= 500:
            t.fail(f"{kind}: {answer.status} {answer.raw[:100]}", f"{label} -> {answer.raw}")
        if answer.error:
            t.count("stream_errors")
            t.fail(f"{kind}: error inside a 200 stream {answer.error[:100]}", f"{label} -> {answer.error}")  # fmt: skip
        return answer

    def _compare(self, job: Job, answer: Answer, cancelled: bool, how: str) -> None:
        t, solo = self.tally, self.solo[job]
        t.count("checked")
        if cancelled:
            same = solo.text.startswith(answer.text)
        else:
            same = answer.done and answer.text == solo.text and answer.finish == solo.finish
        if not same:
            t.count("mismatches")
            t.fail(
                f"changed greedy answer ({how})",
                f"{job.label()}: solo {solo.text!r} ({solo.finish}) vs {answer.text!r} "
                f"({answer.finish}, done={answer.done})",
            )

    def _greedy(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        t = self.tally
        c = self.client()
        try:
            while time.perf_counter() < self.stop_at:
                job = rng.choice(self.extra_jobs if rng.random() < 0.03 else self.jobs)
                roll = rng.random()
                stream = roll >= 0.45
                cancel = rng.randint(1, 3) if roll >= 0.8 else None
                how = "cancelled stream" if cancel else ("stream" if stream else "plain")
                answer = self._check("greedy", job.label(), ask, c, job, stream, cancel)
                if answer is None:
                    c.close()
                    c = self.client()
                    continue
                if stream:
                    t.count("streams")
                if cancel and not answer.done:
                    t.count("cancels")
                    c.close()  # the connection was closed mid-stream: a new one
                    c = self.client()
                if answer.status >= 500 or answer.error:
                    c.close()  # after a server error: a new connection, so nothing after it
                    c = self.client()  # is blamed on one the server may have closed
                elif answer.status == 200:
                    self._compare(job, answer, cancel is not None and not answer.done, how)
                elif answer.status == 404 and job.model == EXTRA:
                    t.count("extra_404")
                else:
                    t.fail(f"greedy: unexpected {answer.status}", f"{job.label()} -> {answer.raw}")
        finally:
            c.close()

    def _loader(self) -> None:
        """Load, ask, unload: "extra" (which the greedy clients ask too, so its unload may
        meet a 409 adapter_in_use) and "churn" (the same directory under a name only the
        loader uses: many load/unload cycles), in turn."""
        t = self.tally
        c = self.client()
        try:
            turn = 0
            while time.perf_counter() < self.stop_at:
                name = (EXTRA, CHURN)[turn % 2]
                turn += 1
                body = {"lora_name": name, "lora_path": str(self.allowed / EXTRA_DIR)}
                answer = self._check("loader", f"load {body}", _post, c, "/v1/load_lora_adapter", body)  # fmt: skip
                if answer is None or answer.status != 200:
                    if answer is not None and answer.status < 500:
                        t.fail(f"loader: load answered {answer.status}", answer.raw)
                    c.close()
                    c = self.client()
                    time.sleep(0.2)
                    continue
                t.count("loads")
                job = replace(self.extra_jobs[turn // 2 % 2], model=name)
                answer = self._check("loader", job.label(), ask, c, job, False)
                if answer is not None and answer.status == 200:
                    self._compare(job, answer, False, "right after a load")
                elif answer is not None and answer.status < 500:
                    t.fail(f"loader: ask answered {answer.status}", f"{job.label()} -> {answer.raw}")  # fmt: skip
                c = self._unload(c, name)
        finally:
            c.close()

    def _unload(self, c: httpx.Client, name: str) -> httpx.Client:
        t = self.tally
        deadline = time.perf_counter() + 30
        body = {"lora_name": name}
        while time.perf_counter() < deadline:
            answer = self._check("loader", f"unload {body}", _post, c, "/v1/unload_lora_adapter", body)  # fmt: skip
            if answer is None or answer.status >= 500:
                c.close()
                c = self.client()
                time.sleep(0.2)
                continue
            if answer.status == 200:
                t.count("unloads")
                return c
            if answer.status == 409 and "adapter_in_use" in answer.raw:
                t.count("unload_busy")
                time.sleep(0.02)
                continue
            t.fail(f"loader: unload answered {answer.status}", answer.raw)
            return c
        t.fail(f"loader: unload of {name} still refused after 30 s", "")
        return c

    def _hostile(self) -> None:
        t = self.tally
        cases = hostile_requests(self.base, self.adapters[0], self.allowed, self.key)
        c = self.client()
        try:
            i = 0
            while time.perf_counter() < self.stop_at:
                h = cases[i % len(cases)]
                i += 1
                t.count("hostile")
                try:
                    if h.fresh:
                        with self.client() as own:
                            r = h.send(own)
                    else:
                        r = h.send(c)
                except httpx.TransportError as exc:
                    t.status("hostile", "dropped")
                    t.count("dropped")
                    t.fail(f"hostile: dropped connection on {h.name!r} ({type(exc).__name__})", repr(exc))  # fmt: skip
                    c.close()
                    c = self.client()
                    continue
                t.status("hostile", r.status_code)
                with t.lock:
                    t.hostile.setdefault(h.name, Counter())[r.status_code] += 1
                if r.status_code not in h.ok:
                    what = "5xx" if r.status_code >= 500 else "unexpected status"
                    t.fail(f"hostile {what}: {h.name!r} -> {r.status_code}", r.text[:300])
                    if r.status_code >= 500:  # a new connection (see _greedy)
                        c.close()
                        c = self.client()
                elif r.status_code >= 400 and not _openai_error(r):
                    t.fail(f"hostile: {h.name!r} -> {r.status_code} without OpenAI error JSON", r.text[:300])  # fmt: skip
                elif r.status_code == 200 and 'data: {"error"' in r.text:
                    t.count("stream_errors")
                    t.fail(f"hostile: error inside a 200 stream on {h.name!r}", r.text[-300:])
        finally:
            c.close()


def _post(c: httpx.Client, path: str, body: dict) -> Answer:
    r = c.post(path, json=body)
    return Answer(r.status_code, raw=r.text[:300])


def _openai_error(r: httpx.Response) -> bool:
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str)
