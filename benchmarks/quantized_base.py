"""Memory of LoRA training on an fp32, int8 or NF4 base: SmolLM2-135M, the demo's instruction run.

    .venv/bin/python benchmarks/quantized_base.py [--variants none,int8,nf4] [--steps 40] [--quick]
    .venv/bin/python benchmarks/quantized_base.py --checkpointing   # + activation checkpointing

Every variant is `lorakit train` with the demo's stage-2 config (tweets as instructions, r=8,
alpha=16, all linear layers, batch 8, 40 steps, max_length 128, 400 training and 100
evaluation examples) plus `quantize`, run in its own process so that ru_maxrss (the peak
resident set, which never goes down on CPU) is that run's own. Reported per run:
- baseline_mb: RSS just before the model is loaded (Python, torch, transformers, tokenized data);
- load_peak_mb: peak RSS once the model is loaded, injected and quantized;
- train_peak_mb: peak RSS at the end of training (before evaluation);
- peak_mb: peak RSS of the whole run (evaluation included), and peak_mb - baseline_mb;
- model_mb: bytes of the model's tensors after quantization (LoRA included, storages once);
- train_seconds, test exact match / perplexity as `lorakit train` reports them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, steps: int, quick: bool, checkpointing: bool, out: Path) -> None:
    """One training run in this process; its measurements go to `out` as JSON."""
    import lorakit.train.loop as loop
    import lorakit.train.run as run_module
    from lorakit.config import TrainConfig
    from lorakit.demo import INSTRUCT, QUICK
    from lorakit.models.quantize import tensor_bytes

    found: dict = {
        "variant": variant,
        "checkpointing": checkpointing,
        "after_imports_mb": _rss_mb(),
    }
    real_load, real_apply, real_fit = loop.load_model, loop.apply_method, run_module.fit

    def load_model(*args, **kwargs):
        found["baseline_mb"] = _rss_mb()
        return real_load(*args, **kwargs)

    def apply_method(model, config):
        result = real_apply(model, config)
        found["model_mb"] = tensor_bytes(model) / 2**20
        found["load_peak_mb"] = _peak_mb()
        found["after_setup_mb"] = _rss_mb()
        return result

    def fit(*args, **kwargs):
        state = real_fit(*args, **kwargs)
        found["train_peak_mb"] = _peak_mb()
        return state

    loop.load_model, loop.apply_method, run_module.fit = load_model, apply_method, fit
    fields = {**INSTRUCT, "max_steps": steps, "quantize": variant}
    fields["activation_checkpointing"] = checkpointing
    if quick:
        fields.update(QUICK)
    config = TrainConfig(**fields, output=tempfile.mkdtemp() + "/run", device="cpu")
    from lorakit.train import train

    t0 = time.perf_counter()
    metrics = train(config, progress=False, log=lambda *a, **k: None)
    found["wall_seconds"] = time.perf_counter() - t0
    found["peak_mb"] = _peak_mb()
    found["train_seconds"] = metrics["train_seconds"]
    found["final_train_loss"] = metrics["final_train_loss"]
    test = metrics["test"]
    found["exact_match"] = test.get("exact_match")
    found["perplexity"] = test.get("perplexity")
    out.write_text(json.dumps(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="none,int8,nf4")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="a smoke run of the script")
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="train with activation_checkpointing (layer activations recomputed in backward)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.quick, args.checkpointing, Path(args.out))
        return
    rows = []
    for variant in args.variants.split(","):
        out = Path(tempfile.mkdtemp()) / "result.json"
        cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)]
        cmd += ["--out", str(out)] + (["--quick"] if args.quick else [])
        cmd += ["--checkpointing"] if args.checkpointing else []
        subprocess.run(cmd, check=True)
        row = json.loads(out.read_text())
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["variant"] == "none"), rows[0])
    print(
        "\n| base | model tensors MB | baseline RSS MB | load peak MB | train peak MB | peak MB "
        "| peak - baseline MB | train s | exact match | perplexity |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        over = r["peak_mb"] - r["baseline_mb"]
        base_over = base["peak_mb"] - base["baseline_mb"]
        print(
            f"| {r['variant']} | {r['model_mb']:.0f} ({r['model_mb'] / base['model_mb']:.2f}x) "
            f"| {r['baseline_mb']:.0f} | {r['load_peak_mb']:.0f} | {r['train_peak_mb']:.0f} "
            f"| {r['peak_mb']:.0f} ({r['peak_mb'] / base['peak_mb']:.2f}x) "
            f"| {over:.0f} ({over / base_over:.2f}x) | {r['train_seconds']:.0f} "
            f"| {r['exact_match']:.3f} | {r['perplexity']:.2f} |"
        )


if __name__ == "__main__":
    main()
