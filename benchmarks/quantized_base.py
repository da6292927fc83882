"""Memory of LoRA training on an fp32, int8 or NF4 base: SmolLM2-135M, the demo's instruction run.

    .venv/bin/python benchmarks/quantized_base.py [--variants none,int8,nf4] [--steps 40] [--quick]
    .venv/bin/python benchmarks/quantized_base.py --checkpointing   # + activation checkpointing
    .venv/bin/python benchmarks/quantized_base.py --variants none,int8,none:keep,int8:keep

    .venv/bin/python benchmarks/quantized_base.py --shape smollm2-360m --quick --eval-samples 4

`--shape` trains a randomly initialised model of a larger SmolLM2's published shape (same
vocabulary, tokenizer and tied head as the 135M) instead of the packaged 135M: where the
weights, not the Python/torch runtime, make most of the peak. Only memory and time mean
anything there (random weights learn nothing in 3 steps).

A variant `<base>:keep` runs with `release_memory: false` (glibc keeps freed memory in its
heap, the allocator's default); plain variants use the run's default (`release_memory`
is on with --quantize or --activation-checkpointing, see src/lorakit/allocator.py).

Every variant is `lorakit train` with the demo's stage-2 config (tweets as instructions, r=8,
alpha=16, all linear layers, batch 8, 40 steps, max_length 128, 400 training and 100
evaluation examples) plus `quantize`, run in its own process so that the peak
resident set (VmHWM), is that run's own. Reported per run:
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
    from lorakit.eval.measure import peak_memory_mb  # VmHWM: this process's own peak

    return peak_memory_mb()


# Published shapes (HuggingFaceTB/SmolLM2-360M and -1.7B config.json); the rest as the 135M.
SHAPES = {
    "smollm2-360m": dict(
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
    ),
    "smollm2-1.7b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}


def build_shape(name: str, out: Path) -> None:
    """Write to `out` a model directory: random fp32 weights of `name`'s shape, the 135M's
    tokenizer."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorakit.models.load import model_dir, resolve_model

    small = model_dir(resolve_model("smollm2-135m"))
    config = AutoConfig.from_pretrained(small)
    for key, value in SHAPES[name].items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for f in small.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy(f, out / f.name)


def child(
    variant: str,
    steps: int,
    quick: bool,
    checkpointing: bool,
    out: Path,
    model: str | None = None,
    eval_samples: int | None = None,
) -> None:
    """One training run in this process; its measurements go to `out` as JSON."""
    import lorakit.train.entry as run_module
    import lorakit.train.loop as loop
    from lorakit.config import TrainConfig
    from lorakit.demo import INSTRUCT, QUICK
    from lorakit.models.quantize import tensor_bytes

    variant, _, keep = variant.partition(":")
    found: dict = {
        "variant": variant + (":keep" if keep else ""),
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
    if keep:
        fields["release_memory"] = False
    if model:
        fields["model"] = model
    if eval_samples:
        fields["max_eval_samples"] = eval_samples
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
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a larger random SmolLM2")
    parser.add_argument("--eval-samples", type=int, help="evaluate on this many examples")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build-shape", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_shape:
        build_shape(args.build_shape, Path(args.out))
        return
    if args.child:
        child(
            args.child,
            args.steps,
            args.quick,
            args.checkpointing,
            Path(args.out),
            args.model,
            args.eval_samples,
        )
        return
    model = None
    if args.shape:  # built in a child too: this process stays small
        model = Path(tempfile.mkdtemp(prefix=f"{args.shape}-"))
        cmd = [sys.executable, __file__, "--build-shape", args.shape, "--out", str(model)]
        subprocess.run(cmd, check=True)
    rows = []
    for variant in args.variants.split(","):
        out = Path(tempfile.mkdtemp()) / "result.json"
        cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)]
        cmd += ["--out", str(out)] + (["--quick"] if args.quick else [])
        cmd += ["--checkpointing"] if args.checkpointing else []
        cmd += ["--model", str(model)] if model else []
        cmd += ["--eval-samples", str(args.eval_samples)] if args.eval_samples else []
        subprocess.run(cmd, check=True)
        row = json.loads(out.read_text())
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["variant"].startswith("none")), rows[0])
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
