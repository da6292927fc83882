"""`make demo`: the main job on the packaged defaults, printed as a short report."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from lorakit.atomic import refuse_existing, replace_dir
from lorakit.config import StrictConfig, TrainConfig

CHAT_QUESTION = "In one sentence, why is fine-tuning only a few low-rank matrices cheaper than full fine-tuning?"

# Sized so the whole demo takes well under 10 minutes on 2 CPU cores (see BENCHMARKS.md).
SENTIMENT = dict(
    model="minilm",
    task="classification",
    data="tweets",
    method="lora",
    r=8,
    alpha=16,
    targets="all-linear",
    batch_size=32,
    lr=2e-3,
    epochs=1.0,
    max_train_samples=12000,
    model_dropout=0.0,  # MiniLM's own dropout: 12% of a CPU step; off also scored higher (BENCHMARKS.md)
    max_eval_samples=2000,  # as the course recipe's held-out set; the benchmark scores all 3,715
)
INSTRUCT = dict(
    model="smollm2-135m",
    task="causal-lm",
    data="tweets",
    method="lora",
    r=8,
    alpha=16,
    targets="all-linear",
    batch_size=8,
    lr=1e-3,
    max_steps=40,
    max_length=128,
    max_train_samples=400,
    max_eval_samples=100,
)
DEMO_RUNS = ("minilm-sentiment", "smollm2-sentiment")
QUICK = dict(max_steps=3, max_train_samples=96, max_eval_samples=24, batch_size=8)


class DemoConfig(StrictConfig):
    """`lorakit demo`'s options: run_demo's arguments."""

    output: str = Field("runs/demo", description="Where the demo's runs go.")
    overwrite: bool = Field(False, description="Replace an earlier demo.")
    quick: bool = Field(False, description="A much shorter run (for tests).")


def run_demo(
    output: str = "runs/demo", overwrite: bool = False, quick: bool = False, say=print
) -> dict:
    out = Path(output)
    # only an earlier demo's directory is replaced, never the user's files
    refuse_existing(out, overwrite, alternative=None)
    replace_dir(out, "demo", DEMO_RUNS, lambda _: None)
    from lorakit.train import train

    t0 = time.perf_counter()
    quick_kw = QUICK if quick else {}
    say("== 1/3  MiniLM sentiment classifier: LoRA on the tweets ==")
    sentiment = train(
        TrainConfig(**{**SENTIMENT, **quick_kw}, output=str(out / DEMO_RUNS[0])),
        log=say,
        progress=not quick,
        baseline=True,
    )
    before, after = sentiment["test_before"], sentiment["test"]
    say(f"{'':24}{'accuracy':>10}{'macro-F1':>10}")
    say(f"{'majority class':24}{after['majority_baseline']:>10.4f}{'':>10}")
    say(f"{'before LoRA (new head)':24}{before['accuracy']:>10.4f}{before['macro_f1']:>10.4f}")
    say(f"{'after LoRA':24}{after['accuracy']:>10.4f}{after['macro_f1']:>10.4f}")
    say(
        f"trained {sentiment['train_samples']:,} tweets in {sentiment['train_seconds']:.0f}s "
        f"({sentiment['train_samples_per_s']:.1f} samples/s) → {out / DEMO_RUNS[0]}"
    )

    say("\n== 2/3  SmolLM2-135M instruction adapter: answer positive / neutral / negative ==")
    instruct = train(
        TrainConfig(**{**INSTRUCT, **quick_kw}, output=str(out / DEMO_RUNS[1])),
        log=say,
        progress=not quick,
        baseline=True,
    )
    b, a = instruct["test_before"], instruct["test"]
    say(
        f"exact match on {a['examples']} test tweets: before {b['exact_match']:.3f} → after {a['exact_match']:.3f}"
    )
    for sample in a.get("samples", [])[:3]:
        say(f"  reference {sample['reference']!r:12} prediction {sample['prediction']!r}")

    say("\n== 3/3  A chat reply from SmolLM2 (base model, chat template) ==")
    reply = chat_reply(CHAT_QUESTION, max_new_tokens=24 if quick else 80)
    say(f"you> {CHAT_QUESTION}\nsmollm2> {reply}")
    say(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; artifacts in {out}/")
    return {"sentiment": sentiment, "instruct": instruct, "chat_reply": reply}


def chat_reply(question: str, max_new_tokens: int = 80) -> str:
    from lorakit.infer.chat import render_chat
    from lorakit.infer.generate import stream
    from lorakit.infer.load import load_for_inference

    model, tokenizer, _, _ = load_for_inference("smollm2-135m", None, "causal-lm")
    prompt = render_chat(tokenizer, [{"role": "user", "content": question}])
    return "".join(stream(model, tokenizer, prompt, max_new_tokens)).strip()
