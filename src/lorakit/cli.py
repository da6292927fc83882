"""The `lorakit` command. Each command is a few lines calling one library function.

Errors a user can cause (LorakitError) print one line `error: ...` and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from lorakit.errors import ConfigError, LorakitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LoRA for any PyTorch model: train, measure, merge, swap and serve adapters (PEFT format).",
)
_state = {"debug": False}

Opt = typer.Option


@app.callback()
def _root(debug: bool = Opt(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


@app.command()
def train(
    config_file: Path | None = typer.Argument(
        None, help="YAML file of TrainConfig fields; flags override it."
    ),
    model: str | None = Opt(
        None, help="minilm, smollm2-135m, an HF directory, a .gguf file or a cached hub id."
    ),
    task: str | None = Opt(None, help="classification or causal-lm."),
    data: str | None = Opt(
        None, help="tweets, or a CSV / JSON / JSONL / Parquet file or directory."
    ),
    output: str | None = Opt(None, help="Run directory."),
    method: str | None = Opt(None, help="lora, dora, full or head."),
    quantize: str | None = Opt(
        None, help="none, int8 or nf4: quantize the frozen base (lora/dora; QLoRA's idea)."
    ),
    r: int | None = Opt(None, help="LoRA rank."),
    alpha: float | None = Opt(None, help="LoRA alpha."),
    dropout: float | None = Opt(None, help="LoRA dropout."),
    model_dropout: float | None = Opt(None, help="Set the model's own dropout layers to this p."),
    targets: str | None = Opt(
        None, help="all-linear, comma-separated names (q_proj,v_proj) or a regex."
    ),
    lr: float | None = Opt(None, help="Peak learning rate."),
    epochs: float | None = Opt(None, help="Passes over the training data."),
    max_steps: int | None = Opt(None, help="Optimizer steps (overrides epochs)."),
    batch_size: int | None = Opt(
        None, help="Examples per micro-batch (under torchrun: in all processes together)."
    ),
    grad_accum: int | None = Opt(None, help="Micro-batches per optimizer step."),
    max_length: int | None = Opt(None, help="Tokens per example."),
    seed: int | None = Opt(None, help="Random seed."),
    lora_plus_ratio: float | None = Opt(None, help="LoRA+: B learns this many times faster."),
    text_column: str | None = Opt(None, help="Classification text column."),
    label_column: str | None = Opt(None, help="Classification label column."),
    max_train_samples: int | None = Opt(None, help="Use at most this many training examples."),
    max_eval_samples: int | None = Opt(None, help="Evaluate on at most this many examples."),
    packing: bool | None = Opt(None, "--packing/--no-packing", help="Causal LM: pack documents."),
    eval_every: int | None = Opt(None, help="Validate every N steps."),
    save_every: int | None = Opt(None, help="Checkpoint every N steps."),
    device: str | None = Opt(None, help="auto, cpu or cuda."),
    distributed: str | None = Opt(
        None, help="Under torchrun: ddp (replicas, default) or fsdp (sharded)."
    ),
    activation_checkpointing: bool | None = Opt(
        None,
        "--activation-checkpointing/--no-activation-checkpointing",
        help="Recompute layer activations in backward: less memory, ~1/3 more compute.",
    ),
    release_memory: bool | None = Opt(
        None,
        "--release-memory/--keep-memory",
        help="CPU: return freed memory to the system (default with --quantize or "
        "--activation-checkpointing): lower peak, some step time.",
    ),
    resume: bool = Opt(
        False, "--resume", help="Continue the run in --output from its last checkpoint."
    ),
    overwrite: bool = Opt(
        False,
        "--overwrite",
        help="Replace an existing --output that is a lorakit run (never other files, the data "
        "or the model).",
    ),
    print_config: bool = Opt(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """Fine-tune a model (LoRA by default) and write adapter, metrics, log and plots."""
    flags = {k: v for k, v in locals().items() if k not in ("config_file", "print_config")}
    from lorakit.train import train as run_train
    from lorakit.yaml_config import resolve_train_config

    config = resolve_train_config(config_file, flags)
    if print_config:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
        return
    metrics = run_train(config, progress=True)
    from lorakit.train.distributed import is_main

    if is_main():  # under torchrun, one summary for the job
        _print_summary(metrics, config.output)


def _print_summary(metrics: dict, output: str) -> None:
    test = metrics["test"]
    shown = {
        k: test[k]
        for k in ("accuracy", "macro_f1", "perplexity", "exact_match", "rouge_l")
        if k in test
    }
    print(
        f"done: {metrics['steps']} steps in {metrics['train_seconds']:.1f}s "
        f"({metrics['train_samples_per_s']:.1f} samples/s, {metrics['train_tokens_per_s']:.0f} tokens/s); "
        + ", ".join(f"test {k} {v:.4f}" for k, v in shown.items())
        + f" → {output}"
    )


@app.command("eval")
def eval_cmd(
    model: str = Opt("minilm", help="Base model."),
    adapter: str | None = Opt(None, help="Adapter directory."),
    data: str = Opt("tweets", help="tweets or a data file/directory."),
    task: str | None = Opt(None, help="Default: the adapter's task."),
    split: str = Opt("test", help="train, validation or test."),
    max_eval_samples: int | None = Opt(None, help="Evaluate on at most this many examples."),
    text_column: str | None = Opt(None),
    label_column: str | None = Opt(None),
    compare_base: bool = Opt(
        False, "--compare-base", help="Also evaluate the base model, side by side."
    ),
    as_json: bool = Opt(False, "--json", help="Print JSON."),
) -> None:
    """Evaluate a model, with or without an adapter."""
    from lorakit.eval.evaluate import evaluate

    result = evaluate(
        model, data, adapter, task, split, compare_base, max_eval_samples, text_column, label_column
    )
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from lorakit.eval.report import print_eval

    print_eval(result)


@app.command()
def classify(
    texts: list[str] = typer.Argument(..., help="Texts to classify."),
    model: str = Opt("minilm", help="Base model."),
    adapter: str | None = Opt(None, help="Classification adapter directory."),
) -> None:
    """Classify texts; prints one JSON line per text."""
    from lorakit.eval.infer import classify as run_classify
    from lorakit.eval.infer import load_for_inference

    loaded, tokenizer, _, labels = load_for_inference(model, adapter, "classification")
    for text, result in zip(texts, run_classify(loaded, tokenizer, texts, labels), strict=True):
        print(json.dumps({"text": text, **result}))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt."),
    model: str = Opt("smollm2-135m", help="Base model."),
    adapter: str | None = Opt(None, help="Adapter directory."),
    max_tokens: int = Opt(128, help="New tokens at most."),
    temperature: float = Opt(0.0, help="0 = greedy."),
    top_p: float = Opt(1.0),
    seed: int | None = Opt(None),
    chat_template: bool = Opt(
        True, "--chat-template/--raw", help="Wrap the prompt as a user turn."
    ),
) -> None:
    """Generate text, streamed to the terminal as it is produced."""
    from lorakit.eval.infer import load_for_inference, render_chat, stream

    loaded, tokenizer, _, _ = load_for_inference(model, adapter, "causal-lm")
    text = (
        render_chat(tokenizer, [{"role": "user", "content": prompt}])
        if chat_template and tokenizer.chat_template
        else prompt
    )
    for piece in stream(loaded, tokenizer, text, max_tokens, temperature, top_p, seed):
        print(piece, end="", flush=True)
    print()


@app.command()
def chat(
    model: str = Opt("smollm2-135m", help="Base model."),
    adapter: str | None = Opt(None, help="Adapter directory."),
    system: str | None = Opt(None, help="System prompt."),
    max_tokens: int = Opt(256, help="New tokens per reply at most."),
) -> None:
    """Chat interactively (the model's chat template; replies stream). /exit to leave."""
    from lorakit.eval.infer import chat_loop, load_for_inference

    loaded, tokenizer, _, _ = load_for_inference(model, adapter, "causal-lm")

    def read() -> str | None:
        try:
            return input("you> ")
        except EOFError:
            return None

    def write(piece: str) -> None:
        print(piece, end="", flush=True)

    chat_loop(loaded, tokenizer, read, write, system, max_tokens)


@app.command()
def merge(
    adapter: str = Opt(..., help="Adapter directory."),
    output: str = Opt(..., help="Directory for the merged model."),
    model: str = Opt("minilm", help="Base model the adapter was trained on."),
    overwrite: bool = Opt(
        False, "--overwrite", help="Replace an existing output lorakit wrote (nothing else)."
    ),
    dequantize: bool = Opt(
        False,
        "--dequantize",
        help="Adapter trained with --quantize: merge into the base as training saw it "
        "(quantized, then dequantized) instead of the full-precision base.",
    ),
) -> None:
    """Merge an adapter into its base: a plain transformers directory, no lorakit needed."""
    from lorakit.eval.infer import merge_to_directory

    written = merge_to_directory(model, adapter, output, overwrite, dequantize=dequantize)
    print(f"merged model written to {written}")


@app.command()
def inspect(
    adapter: Path = typer.Argument(..., help="An adapter directory (lorakit or peft)."),
) -> None:
    """Validate an adapter directory's files and print a summary as JSON."""
    from lorakit.adapters.inspect import summarize

    print(json.dumps(summarize(adapter), indent=2))


@app.command()
def compare(
    config_file: Path | None = typer.Argument(
        None, help="YAML file of CompareConfig fields; flags override it."
    ),
    model: str | None = Opt(None, help="Model every run starts from."),
    task: str | None = Opt(None, help="classification or causal-lm."),
    data: str | None = Opt(None, help="tweets, or a data file/directory."),
    output: str | None = Opt(None, help="Sweep directory (re-run the command to resume it)."),
    ranks: str | None = Opt(None, help="LoRA ranks, comma-separated (default 1,2,4,8,16,32,64)."),
    seeds: int | None = Opt(None, help="Repetitions of every run: mean ± std."),
    seed: int | None = Opt(None, help="First seed."),
    dora_rank: int | None = Opt(None, help="Rank of the DoRA run."),
    full: bool | None = Opt(None, "--full/--no-full", help="Include full fine-tuning."),
    head: bool | None = Opt(None, "--head/--no-head", help="Include a head-only run."),
    max_steps: int | None = Opt(None, help="Optimizer steps per run."),
    epochs: float | None = Opt(None, help="Passes over the data per run."),
    batch_size: int | None = Opt(None, help="Examples per micro-batch."),
    lr: float | None = Opt(None, help="Learning rate of lora/dora/head runs."),
    full_lr: float | None = Opt(None, help="Learning rate of full fine-tuning."),
    alpha: float | None = Opt(None, help="LoRA alpha (default 2*r)."),
    max_train_samples: int | None = Opt(None, help="Training examples at most."),
    max_eval_samples: int | None = Opt(None, help="Evaluation examples at most."),
    text_column: str | None = Opt(None),
    label_column: str | None = Opt(None),
    max_length: int | None = Opt(None, help="Tokens per example."),
    metric: str | None = Opt(None, help="Score the findings rank by."),
    latency_samples: int | None = Opt(None, help="Test examples timed one at a time."),
    isolate: bool | None = Opt(
        None, "--isolate/--in-process", help="Train each run in its own process (default)."
    ),
    device: str | None = Opt(None, help="auto, cpu or cuda."),
    overwrite: bool = Opt(
        False, "--overwrite", help="Replace a lorakit directory of another sweep (nothing else)."
    ),
    print_config: bool = Opt(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """LoRA at several ranks and targets vs DoRA, full fine-tuning and head-only → report.md."""
    flags = {k: v for k, v in locals().items() if k not in ("config_file", "print_config")}
    flags["include_full"], flags["include_head"] = flags.pop("full"), flags.pop("head")
    from lorakit.compare import CompareConfig, run_sweep
    from lorakit.compare.config import resolve

    config = resolve(CompareConfig, config_file, flags)
    if print_config:
        _print_yaml(config.model_dump(mode="json"))
        return
    results = run_sweep(config)
    print(f"\n{results['findings']}\n→ {Path(config.output) / 'report.md'}")


@app.command("rank-probe")
def rank_probe(
    config_file: Path | None = typer.Argument(
        None, help="YAML file of RankProbeConfig fields; flags override it."
    ),
    model: str | None = Opt(None, help="Model to probe."),
    task: str | None = Opt(None, help="classification or causal-lm."),
    data: str | None = Opt(None, help="tweets, or a data file/directory."),
    output: str | None = Opt(None, help="Output directory."),
    rank: int | None = Opt(None, help="The probe run's (high) rank (default 64)."),
    targets: str | None = Opt(None, help="all-linear, names (q_proj,v_proj) or a regex."),
    energy: float | None = Opt(None, help="Share of the update's energy to keep (default 0.9)."),
    quantile: float | None = Opt(None, help="Share of layers the one r covers (default 0.75)."),
    pattern: bool | None = Opt(
        None, "--pattern/--no-pattern", help="Also recommend a per-layer rank_pattern."
    ),
    validate_run: bool | None = Opt(
        None, "--validate/--no-validate", help="Train and score the recommendation (default)."
    ),
    against: str | None = Opt(
        None, help="A lorakit compare output dir: place the recommendation among its ranks."
    ),
    max_steps: int | None = Opt(None, help="Optimizer steps per run."),
    epochs: float | None = Opt(None, help="Passes over the data per run."),
    batch_size: int | None = Opt(None, help="Examples per micro-batch."),
    lr: float | None = Opt(None, help="Learning rate."),
    alpha: float | None = Opt(None, help="LoRA alpha (default 2*r)."),
    max_train_samples: int | None = Opt(None, help="Training examples at most."),
    max_eval_samples: int | None = Opt(None, help="Evaluation examples at most."),
    text_column: str | None = Opt(None),
    label_column: str | None = Opt(None),
    max_length: int | None = Opt(None, help="Tokens per example."),
    seed: int | None = Opt(None, help="Random seed."),
    device: str | None = Opt(None, help="auto, cpu or cuda."),
    overwrite: bool = Opt(
        False, "--overwrite", help="Replace an existing output lorakit wrote (nothing else)."
    ),
    print_config: bool = Opt(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """Recommend a LoRA rank from a high-rank run's singular values, then validate it."""
    flags = {k: v for k, v in locals().items() if k not in ("config_file", "print_config")}
    from lorakit.compare import RankProbeConfig
    from lorakit.compare import rank_probe as run_probe
    from lorakit.compare.config import resolve

    config = resolve(RankProbeConfig, config_file, flags)
    if print_config:
        _print_yaml(config.model_dump(mode="json"))
        return
    result = run_probe(config)
    rec = result["recommendation"]
    print(
        f"\nrecommended r={rec['r']}"
        + (
            f" with a rank_pattern for {len(rec['rank_pattern'])} layers"
            if rec["rank_pattern"]
            else ""
        )
        + f" → {Path(config.output) / 'recommendation.yaml'} (lorakit train that file); "
        f"report: {Path(config.output) / 'report.md'}"
    )


@app.command()
def serve(
    config_file: Path | None = typer.Argument(
        None, help="YAML file of ServeConfig fields; flags override it."
    ),
    model: str | None = Opt(None, help="The causal LM (default smollm2-135m)."),
    adapter: list[str] | None = Opt(None, help="NAME=DIR, a generation adapter (repeatable)."),
    classifier: str | None = Opt(None, help="A classification model for /v1/classify."),
    classifier_adapter: list[str] | None = Opt(
        None, help="NAME=DIR, a classification adapter (repeatable)."
    ),
    host: str | None = Opt(None, help="Interface (default 127.0.0.1)."),
    port: int | None = Opt(None, help="Port (default 8000; 0 = any free port)."),
    adapter_dir: list[str] | None = Opt(
        None, help="Directory runtime-loaded adapters may come from (repeatable)."
    ),
    max_batch_size: int | None = Opt(None, help="Sequences decoded together (default 32)."),
    max_queue: int | None = Opt(None, help="Waiting requests before 429 (default 256)."),
    max_tokens_cap: int | None = Opt(None, help="Largest max_tokens allowed (default 1024)."),
    max_prompt_tokens: int | None = Opt(None, help="Longest prompt in tokens (default 4096)."),
    max_body_bytes: int | None = Opt(None, help="Largest request body (default 1 MB)."),
    request_timeout: float | None = Opt(
        None, help="Seconds a generation may take, queue included; then 408 (default 600)."
    ),
    stall_timeout: float | None = Opt(
        None, help="/health says 503 after this many seconds without progress (default 120)."
    ),
    api_key_env: str | None = Opt(
        None, help="Env variable holding the API key (default LORAKIT_API_KEY)."
    ),
    served_model_name: str | None = Opt(None, help="The base model's id in the API."),
    page: str | None = Opt(None, help="An HTML file to serve at /."),
    device: str | None = Opt(None, help="auto, cpu or cuda."),
    print_config: bool = Opt(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """An OpenAI-compatible server: one base model, many adapters, batched together."""
    flags = {k: v for k, v in locals().items() if k not in ("config_file", "print_config")}
    from lorakit.serve.config import ServeConfig
    from lorakit.serve.run import serve as run_server
    from lorakit.yaml_config import resolve_config

    flags["adapters"] = _pairs(flags.pop("adapter"), "--adapter")
    flags["classifier_adapters"] = _pairs(flags.pop("classifier_adapter"), "--classifier-adapter")
    flags["adapter_dirs"] = flags.pop("adapter_dir") or None
    config = resolve_config(ServeConfig, config_file, flags)
    if print_config:
        _print_yaml(config.model_dump(mode="json"))
        return
    run_server(config)


def _pairs(values: list[str] | None, flag: str) -> dict[str, str] | None:
    if not values:
        return None
    pairs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} takes NAME=DIR, got {value!r}")
        pairs[name] = path
    return pairs


def _print_yaml(values: dict) -> None:
    import yaml

    print(yaml.safe_dump(values, sort_keys=False), end="")


@app.command()
def demo(
    output: str = Opt("runs/demo", help="Where the demo's runs go."),
    overwrite: bool = Opt(False, "--overwrite", help="Replace an earlier demo."),
    quick: bool = Opt(False, "--quick", help="A much shorter run (for tests)."),
) -> None:
    """The main job on the defaults: MiniLM sentiment LoRA, SmolLM2 instruction LoRA, one chat reply."""
    from lorakit.demo import run_demo

    run_demo(output, overwrite, quick)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    from lorakit.quiet import quiet_libraries

    quiet_libraries()
    try:
        app(args=argv, standalone_mode=False)
    except LorakitError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # click's usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is None:
            from lorakit.atomic import as_write_error

            # a full disk or a permission error in a write outside lorakit's own writers
            disk = None if _state["debug"] else as_write_error(exc, verb="access")
            if disk is None:
                raise
            print(f"error: {disk}", file=sys.stderr)
            return disk.exit_code
        show = getattr(exc, "show", None)
        if show:
            show()
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
