"""The `lorakit` command. Each command is a few lines calling one library function.

Errors a user can cause (LorakitError) print one line `error: ...` and exit 2;
`--debug` shows the traceback instead. The options of train, compare, rank-probe and serve
are generated from their config's fields (cli_options), so a field is declared once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from lorakit.cli_options import config_command
from lorakit.compare.config import CompareConfig, RankProbeConfig, resolve
from lorakit.config import TrainConfig
from lorakit.errors import LorakitError
from lorakit.serve.config import ServeConfig

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
@config_command(TrainConfig)
def train(config: TrainConfig) -> None:
    """Fine-tune a model (LoRA by default) and write adapter, metrics, log and plots."""
    from lorakit.train import train as run_train

    metrics = run_train(config, progress=True)
    from lorakit.train.distributed import is_main

    if is_main():  # under torchrun, one summary for the job
        _print_summary(metrics, config.output)


def _print_summary(metrics: dict, output: str) -> None:
    test = metrics["test"]
    keys = [
        k for k in ("accuracy", "macro_f1", "perplexity", "exact_match", "rouge_l") if k in test
    ]
    print(
        f"done: {metrics['steps']} steps in {metrics['train_seconds']:.1f}s "
        f"({metrics['train_samples_per_s']:.1f} samples/s, {metrics['train_tokens_per_s']:.0f} tokens/s); "
        f"{', '.join(f'test {k} {test[k]:.4f}' for k in keys)} → {output}"
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
    from lorakit.infer.classify import classify as run_classify
    from lorakit.infer.load import load_for_inference

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
    from lorakit.infer.chat import render_chat
    from lorakit.infer.generate import stream
    from lorakit.infer.load import load_for_inference

    loaded, tokenizer, _, _ = load_for_inference(model, adapter, "causal-lm")
    turn = [{"role": "user", "content": prompt}]
    text = render_chat(tokenizer, turn) if chat_template and tokenizer.chat_template else prompt
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
    from lorakit.infer.chat import chat_loop
    from lorakit.infer.load import load_for_inference

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
    from lorakit.infer.merge import merge_to_directory

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
@config_command(CompareConfig, resolve)
def compare(config: CompareConfig) -> None:
    """LoRA at several ranks and targets vs DoRA, full fine-tuning and head-only → report.md."""
    from lorakit.compare import run_sweep

    results = run_sweep(config)
    print(f"\n{results['findings']}\n→ {Path(config.output) / 'report.md'}")


@app.command("rank-probe")
@config_command(RankProbeConfig, resolve)
def rank_probe(config: RankProbeConfig) -> None:
    """Recommend a LoRA rank from a high-rank run's singular values, then validate it."""
    from lorakit.compare import rank_probe as run_probe

    rec, out = run_probe(config)["recommendation"], Path(config.output)
    layers = len(rec["rank_pattern"] or ())
    print(
        f"\nrecommended r={rec['r']}{f' with a rank_pattern for {layers} layers' if layers else ''}"
        f" → {out / 'recommendation.yaml'} (lorakit train that file); report: {out / 'report.md'}"
    )


@app.command()
@config_command(ServeConfig)
def serve(config: ServeConfig) -> None:
    """An OpenAI-compatible server: one base model, many adapters, batched together."""
    from lorakit.serve.launch import serve as run_server

    run_server(config)


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
    except Exception as exc:  # click's exits carry their own exit code
        code = getattr(exc, "exit_code", None)
        if _usage_error(exc):  # unknown flag, bad choice...: one line too
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx else "lorakit"
            print(f"error: {exc.format_message()} — see `{where} --help`", file=sys.stderr)
            return code
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


def _usage_error(exc: Exception) -> bool:
    # typer ships its own copy of click, so match the class by name, not by identity
    return any(c.__name__ == "UsageError" for c in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
