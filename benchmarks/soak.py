"""Soak of `lorakit serve`, longer than CI's (tests/reliability/test_soak.py runs the same
driver, tests/reliability/soak_driver.py, for 45 s):

    .venv/bin/python benchmarks/soak.py [--seconds 600] [--clients 32] [--model DIR]

A server process on 127.0.0.1 (default: the tests' tiny random Llama, built in a temporary
directory; --model: any causal-LM directory) with four adapters of random non-zero B, under
`clients` greedy clients (base and adapters, completions and chat, plain / streamed /
cancelled mid-stream; every answer compared with the same request's answer alone), a client
loading and unloading a fifth adapter in a loop, and a client sending hostile requests.
Prints the counts, every failure with its request and answer, and a markdown table for
BENCHMARKS.md; exits 1 if anything failed (a 5xx, an error inside a stream, a dropped
connection, a changed greedy answer, a hostile request not answered 4xx / 200).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from reliability.server_fixtures import KEY, make_adapters, start_server  # noqa: E402
from reliability.soak_driver import Soak  # noqa: E402

ADAPTERS = ["a0", "a1", "a2", "a3", "extra"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="load duration")
    parser.add_argument("--clients", type=int, default=32, help="greedy client threads")
    parser.add_argument("--warmup", type=float, default=10, help="uncounted load first")
    parser.add_argument("--max-tokens", type=int, default=24, help="per greedy request")
    parser.add_argument("--threads", type=int, default=1, help="server OMP_NUM_THREADS")
    parser.add_argument("--model", help="causal-LM directory (default: the tiny Llama)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lorakit-soak-") as tmp:
        root = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            from conftest import _write_llama  # the tests' tiny random Llama

            model = _write_llama(root / "tiny-llama")
        allowed = root / "allowed"
        paths = make_adapters(model, allowed, ADAPTERS)
        at_start = {n: p for n, p in paths.items() if n != "extra"}
        cap = ["--max-tokens-cap", str(max(64, args.max_tokens))]
        served = start_server(model, at_start, allowed, cap, threads=args.threads)
        try:
            soak = Soak(served.url, served.headers, served.pid, served.base, list(at_start),
                        allowed, KEY, clients=args.clients, max_tokens=args.max_tokens)  # fmt: skip
            soak.record_solo()
            report = soak.run(args.seconds, warmup=args.warmup)
        finally:
            log = served.stop()
    print(report.summary())
    if report.failures and "Traceback" in log:
        print("\n---- server log (tail) ----\n" + log[-10000:])
    print(f"\n{model.name}, {os.cpu_count()} CPU cores, server OMP_NUM_THREADS={args.threads}\n")
    print(report.markdown())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
