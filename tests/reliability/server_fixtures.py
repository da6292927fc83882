"""A real `lorakit serve` process for the reliability tests and benchmarks/soak.py: tiny
adapters with distinct random B saved on a model directory, the server started on port 0,
its RSS read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

KEY = "reliability-key-0123456789"
LORAKIT = str(Path(sys.executable).parent / "lorakit")


def make_adapters(model_dir: Path, out: Path, names: list[str], seed: int = 0) -> dict[str, Path]:
    """One r=4 adapter per name on q/v/o with random non-zero B (seeded, distinct per name),
    so every adapter changes the output and no two agree."""
    import torch

    import lorakit
    from lorakit.models.load import load_model

    model, _ = load_model(model_dir, "causal-lm")
    paths = {}
    for i, name in enumerate(names):
        cfg = lorakit.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])
        torch.manual_seed(1000 + seed + i)  # A's init: the same whatever ran before
        lorakit.inject(model, cfg, adapter=name)
        gen = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if f".{name}." in n and n.endswith(".B"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        paths[name] = lorakit.save_adapter(model, out / name, adapter=name)
        lorakit.delete_adapter(model, name)
    return paths


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    base: str
    adapters: dict[str, Path]
    allowed: Path | None
    key: str = KEY
    log: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def rss_mb(self) -> float:
        return proc_status_mb(self.pid, "VmRSS")

    def stop(self) -> str:
        """Terminate the server; returns its output (stdout + stderr: the tracebacks of any
        5xx), read all along by a thread so a full pipe never blocks it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.drain is not None:
            self.drain.join(10)
        return "".join(self.log)


def proc_status_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


def wait_until_listening(proc: subprocess.Popen, timeout: float) -> tuple[str, list[str]]:
    """(the URL `lorakit serve` announces, its output up to then); kills it if it never does."""
    url, lines, deadline = None, [], time.time() + timeout
    while url is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "listening on " in line:
            url = line.split("listening on ")[1].split()[0]
    if url is None:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))
    return url, lines


def start_server(
    model_dir: Path,
    adapters: dict[str, Path],
    allowed: Path | None,
    extra_args: list[str] = (),
    threads: int = 1,
    timeout: float = 180,
) -> Served:
    """`lorakit serve` on 127.0.0.1:0 with `adapters` loaded at start and runtime loading
    allowed from `allowed` (None: off), the API key set; returns once it says it is listening."""
    cmd = [LORAKIT, "serve", "--model", str(model_dir), "--port", "0", *extra_args]
    if allowed is not None:  # None: runtime loading off
        cmd += ["--adapter-dir", str(allowed)]
    for name, path in adapters.items():
        cmd += ["--adapter", f"{name}={path}"]
    env = {**os.environ, "LORAKIT_API_KEY": KEY, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    url, lines = wait_until_listening(proc, timeout)
    served = Served(proc, url, Path(model_dir).name, dict(adapters), allowed, log=lines)

    def drain():
        for out in proc.stdout:
            served.log.append(out)

    served.drain = threading.Thread(target=drain, daemon=True)
    served.drain.start()
    return served
