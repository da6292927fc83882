"""Training on real data, end to end: lorakit vs peft + transformers Trainer, same config.

    .venv/bin/python benchmarks/train_real.py [--tasks minilm,smollm2] [--minilm-samples 4000]

Same model, the same tokenized examples (lorakit's preparation of the tweets), the same LoRA
(r=8, alpha=16, all linear layers, dropout 0), batch size, learning rate, schedule (warmup +
cosine), steps and seed; MiniLM's own dropout off for all. What differs is the training
stack:
- peft + Trainer, padding to max_length: the course recipe's data pipeline (every example
  padded to the longest allowed length);
- peft + Trainer, dynamic padding: the same with padding to each batch's longest example;
- lorakit train: length-grouped batches, dynamic padding, LM head only on labelled positions.
Precision (issue #15): `peft-bf16` is peft + Trainer with `bf16=True, use_cpu=True` (what a
user with a bf16 CPU would do); `lorakit-fp32` forces `--precision fp32`; `lorakit` runs the
default (`auto`: bf16 where this machine's bf16 matmul is measured fast, else fp32).
Each variant runs in its own process (peak RSS is its own) and is scored by lorakit's
evaluation on the same test examples (peft's adapter merged into its model first): accuracy
and macro-F1 for MiniLM (tweet sentiment), exact match for SmolLM2 (tweets as instructions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

from lorakit.eval.measure import peak_memory_mb

VARIANTS = ["peft-max-length", "peft-dynamic", "lorakit"]
PRECISION_VARIANTS = ["peft-bf16", "lorakit-fp32", "lorakit"]  # --variants for issue #15


def config(task: str, samples: int, quick: bool = False):
    from lorakit.config import TrainConfig
    from lorakit.demo import INSTRUCT, SENTIMENT

    base = SENTIMENT if task == "minilm" else INSTRUCT
    fields = {**base, "output": tempfile.mkdtemp() + "/run"}
    if task == "minilm":
        fields.update(max_train_samples=samples, max_eval_samples=2000, model_dropout=0.0)
    if quick:  # a smoke run of the benchmark itself
        fields.update(max_steps=2, max_train_samples=32, max_eval_samples=8, epochs=1.0)
    return TrainConfig(**fields)


def run_lorakit(cfg) -> dict:
    from lorakit.train import train

    m = train(cfg, progress=False, log=lambda *a, **k: None)
    return {
        "precision": m.get("precision", "fp32"),
        "seconds": m["train_seconds"],
        "samples": m["train_samples"],
        "steps": m["steps"],
        "test": m["test"],
    }


def run_peft(cfg, padding: str, bf16: bool = False) -> dict:
    import peft
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from lorakit.data.prepare import prepare
    from lorakit.eval.splits import split_metrics
    from lorakit.models.load import load_model, load_tokenizer, model_dir, resolve_model

    # lorakit's own preparation: the identical tokenized examples and seeded model
    tokenizer = load_tokenizer(model_dir(resolve_model(cfg.model)), cfg.task)
    data = prepare(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, cfg.task, label_names=data.labels, seed=cfg.seed)
    if cfg.model_dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = cfg.model_dropout
    classification = cfg.task == "classification"
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            task_type="SEQ_CLS" if classification else "CAUSAL_LM",
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
        ),
    )
    kw = {"padding": padding, "max_length": cfg.max_length if padding == "max_length" else None}
    if classification:
        collator = DataCollatorWithPadding(tokenizer, **kw)
    else:
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, **kw)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.resolved_lr(),
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the steps
        lr_scheduler_type="cosine",
        max_grad_norm=cfg.max_grad_norm or 0.0,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        seed=cfg.seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        bf16=bf16,  # Trainer's CPU mixed precision: autocast over the fp32 model
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data.train, data_collator=collator)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    merged = model.merge_and_unload().eval()
    return {
        "precision": "bf16 autocast" if bf16 else "fp32",
        "seconds": seconds,
        "samples": out.global_step * cfg.batch_size,
        "steps": out.global_step,
        "test": split_metrics(merged, tokenizer, data, cfg.task, "test"),
    }


def child(task: str, variant: str, samples: int, quick: bool) -> dict:
    cfg = config(task, samples, quick)
    if variant == "lorakit":
        r = run_lorakit(cfg)
    elif variant == "lorakit-fp32":
        r = run_lorakit(cfg.model_copy(update={"precision": "fp32"}))
    else:
        padding = "max_length" if variant == "peft-max-length" else "longest"
        r = run_peft(cfg, padding, bf16=variant == "peft-bf16")
    r["peak_rss_mb"] = peak_memory_mb()  # VmHWM: this process's own peak
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="minilm,smollm2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--minilm-samples", type=int, default=4000)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="2 steps each: check the script runs")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        task, variant = args.only.split(":")
        print(
            "RESULT " + json.dumps(child(task, variant, args.minilm_samples, args.quick)),
            flush=True,
        )
        return
    results = {}
    for task in args.tasks.split(","):
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--only", f"{task}:{variant}"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not lines:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                sys.exit(f"{task}:{variant} failed")
            results[(task, variant)] = json.loads(lines[-1][7:])
    print(
        "| model | stack | precision | steps | train s | samples/s | vs peft max-length | vs peft dynamic | vs lorakit fp32 | peak RSS MB | vs peft dynamic | test metric |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (task, variant), r in results.items():
        sps = r["samples"] / r["seconds"]
        ref_max = results.get((task, "peft-max-length"), r)
        ref_dyn = results.get((task, "peft-dynamic"), results.get((task, "peft-bf16"), r))
        ref_fp32 = results.get((task, "lorakit-fp32"), r)
        metric = (
            f"accuracy {r['test']['accuracy']:.4f}, macro-F1 {r['test']['macro_f1']:.4f}"
            if task == "minilm"
            else f"exact match {r['test']['exact_match']:.2f}"
        )
        print(
            f"| {task} | {variant} | {r['precision']} | {r['steps']} | {r['seconds']:.0f} | "
            f"{sps:.1f} | {sps / (ref_max['samples'] / ref_max['seconds']):.2f}x | "
            f"{sps / (ref_dyn['samples'] / ref_dyn['seconds']):.2f}x | "
            f"{sps / (ref_fp32['samples'] / ref_fp32['seconds']):.2f}x | {r['peak_rss_mb']:,.0f} | "
            f"{r['peak_rss_mb'] / ref_dyn['peak_rss_mb']:.2f}x | {metric} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{t}:{v}": r for (t, v), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
