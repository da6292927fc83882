"""The `lorakit` command. Each command is a few lines calling one library function.

Errors a user can cause (LorakitError) print one line `error: ...` and exit 2;
`--debug` shows the traceback instead. Every command's options are generated from its
config's fields (cli_options), so a field is declared once; train, compare, rank-probe and
serve also read a YAML file of those fields.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer

from lorakit.adapters.inspect import InspectConfig, summarize
from lorakit.cli_options import config_command
from lorakit.compare.config import CompareConfig, RankProbeConfig, resolve
from lorakit.config import TrainConfig
from lorakit.demo import DemoConfig, run_demo
from lorakit.eval.config import EvalConfig
from lorakit.export.config import ExportConfig
from lorakit.infer.config import ChatConfig, ClassifyConfig, GenerateConfig, MergeConfig
from lorakit.serve.config import ServeConfig
from lorakit.serve.feedback_export import FeedbackExportConfig, FeedbackReportConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LoRA for any PyTorch model: train, measure, merge, swap and serve adapters (PEFT format).",
)
_state = {"debug": False}
flags_only = functools.partial(config_command, config_file=False)  # the one-shot commands


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _state["debug"] = debug


@app.command()
@config_command(TrainConfig)
def train(config: TrainConfig) -> None:
    """Fine-tune a model (LoRA by default) and write adapter, metrics, log and plots."""
    from lorakit.train import train as run_train

    metrics = run_train(config, progress=True)
    from lorakit.train.distributed import is_main
    from lorakit.train.entry import summary

    if is_main():  # under torchrun, one summary for the job
        print(summary(metrics, config.output))


@app.command("eval")
@flags_only(EvalConfig)
def eval_cmd(config: EvalConfig) -> None:
    """Evaluate a model, with or without an adapter."""
    from lorakit.eval.evaluate import evaluate
    from lorakit.eval.report import print_eval

    result = evaluate(**config.model_dump(exclude={"as_json"}))
    if config.as_json:
        print(json.dumps(result, indent=2))
    else:
        print_eval(result)


@app.command()
@flags_only(ClassifyConfig)
def classify(config: ClassifyConfig) -> None:
    """Classify texts; prints one JSON line per text."""
    from lorakit.infer.classify import classify as run_classify

    loaded, tok, _, labels = _load(config, "classification")
    results = run_classify(loaded, tok, config.texts, labels)
    for text, result in zip(config.texts, results, strict=True):
        print(json.dumps({"text": text, **result}))


@app.command()
@flags_only(GenerateConfig)
def generate(config: GenerateConfig) -> None:
    """Generate text, streamed to the terminal as it is produced."""
    from lorakit.infer.chat import render_chat
    from lorakit.infer.generate import stream

    loaded, tokenizer, _, _ = _load(config, "causal-lm", single_row=True)
    text = config.prompt
    if config.chat_template and tokenizer.chat_template:
        text = render_chat(tokenizer, [{"role": "user", "content": text}])
    sampling = (config.max_tokens, config.temperature, config.top_p, config.seed)
    for piece in stream(loaded, tokenizer, text, *sampling):
        print(piece, end="", flush=True)
    print()


@app.command()
@flags_only(ChatConfig)
def chat(config: ChatConfig) -> None:
    """Chat interactively (the model's chat template; replies stream). /exit to leave."""
    from lorakit.infer.chat import chat_loop

    loaded, tokenizer, _, _ = _load(config, "causal-lm", single_row=True)

    def read() -> str | None:
        try:
            return input("you> ")
        except EOFError:
            return None

    write = functools.partial(print, end="", flush=True)  # a reply streams piece by piece
    chat_loop(loaded, tokenizer, read, write, config.system, config.max_tokens)


@app.command()
@flags_only(ExportConfig)
def export(config: ExportConfig) -> None:
    """Export for llama.cpp / Ollama (GGUF), vLLM (peft) or transformers (merged)."""
    from lorakit.export.run import export as run_export

    print("\n".join(f"written: {path}" for path in run_export(config)))


@app.command()
@flags_only(MergeConfig)
def merge(config: MergeConfig) -> None:
    """Merge an adapter into its base: a plain transformers directory, no lorakit needed."""
    from lorakit.infer.merge import merge_to_directory

    print(f"merged model written to {merge_to_directory(**config.model_dump())}")


@app.command()
@flags_only(InspectConfig)
def inspect(config: InspectConfig) -> None:
    """Validate an adapter directory's files and print a summary as JSON."""
    print(json.dumps(summarize(config.adapter), indent=2))


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


feedback_app = typer.Typer(
    no_args_is_help=True, help="Feedback stored by `lorakit serve`: preference pairs and scores."
)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@flags_only(FeedbackExportConfig)
def feedback_export(config: FeedbackExportConfig) -> None:
    """Feedback as preference pairs (JSONL) that `lorakit train --objective dpo` reads."""
    from lorakit.serve.feedback_export import export_pairs

    pairs, rows = export_pairs(config)
    better = sum(p.origin == "better" for p in pairs)
    print(
        f"{len(pairs)} preference pair{'' if len(pairs) == 1 else 's'} ({better} with a better "
        f"reply, {len(pairs) - better} 👍 vs 👎) from {rows} feedback rows → {config.output}"
    )


@feedback_app.command("report")
@flags_only(FeedbackReportConfig)
def feedback_report(config: FeedbackReportConfig) -> None:
    """The feedback score (👍 / (👍 + 👎)) per model or adapter, and the pairs it gives."""
    from lorakit.serve.feedback_export import print_report, report

    result = report(config)
    if config.as_json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


@app.command()
@flags_only(DemoConfig)
def demo(config: DemoConfig) -> None:
    """The main job on the defaults: MiniLM sentiment LoRA, SmolLM2 instruction LoRA, one chat reply."""
    run_demo(**config.model_dump())


def _load(config, task: str, *, single_row: bool = False):
    """load_for_inference for an inference command at its --precision; the choice is said on
    stderr (stdout is the output) once the model loaded, so a bad input stays one line.
    single_row: the command decodes one sequence at a time (generate, chat)."""
    from lorakit.infer.load import inference_precision, load_for_inference

    choice = inference_precision(config.precision, single_row=single_row)
    loaded = load_for_inference(config.model, config.adapter, task, choice, config.quantize)
    print(choice.line(), file=sys.stderr)
    if config.quantize != "none":
        print(f"base: {config.quantize}-quantized (--quantize)", file=sys.stderr)
    return loaded


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line and exit code 2 (cli_errors)."""
    from lorakit.cli_errors import run_reporting
    from lorakit.quiet import quiet_libraries

    quiet_libraries()
    return run_reporting(lambda: app(args=argv, standalone_mode=False), lambda: _state["debug"])


if __name__ == "__main__":
    sys.exit(main())
