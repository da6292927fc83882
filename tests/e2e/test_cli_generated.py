"""What cli_options generates beyond plain options (positional arguments, required fields,
renamed and on-only flags), and the one-shot commands' command lines reaching the library
with the values they always did."""

from pathlib import Path

import pytest
import torch
import typer
from pydantic import Field

from lorakit.cli import main
from lorakit.cli_options import config_command
from lorakit.config import DATA_COLUMNS, StrictConfig
from lorakit.precision import auto_precision, resolve_precision


class Toy(StrictConfig):
    words: list[str] = Field(description="Words.", json_schema_extra={"argument": True})
    target: str = Field(description="Required, no default.")
    count: int = Field(3, gt=0, description="How many.")
    chat_template: bool = Field(True, description="Renamed: --chat-template/--raw.")
    as_json: bool = Field(False, description="Renamed: --json.")


def _run(cls, args, **kw):
    """(exit code, the config the command got, or the error)."""
    seen = []
    app = typer.Typer()
    app.command()(config_command(cls, **kw)(seen.append))
    app.command("other")(lambda: None)  # two commands: the toy one is addressed by name
    try:
        app(args=["append", *args], standalone_mode=False)
    except Exception as exc:  # click's usage errors carry their exit code
        return getattr(exc, "exit_code", None), exc
    return 0, seen[0]


def test_positional_arguments_and_renamed_flags():
    code, config = _run(Toy, ["a", "b", "--target", "t", "--raw", "--json"], config_file=False)
    assert code == 0 and config.words == ["a", "b"]
    assert config.target == "t" and config.chat_template is False and config.as_json is True
    code, config = _run(Toy, ["a", "--target", "t"], config_file=False)
    assert config.words == ["a"] and config.chat_template is True and config.as_json is False
    assert config.count == 3  # the field's default, declared once


class Spot(StrictConfig):
    where: Path | None = Field(None, description="A place.", json_schema_extra={"argument": True})


def test_an_optional_argument_is_optional_and_typed():
    assert _run(Spot, [], config_file=False) == (0, Spot())
    code, config = _run(Spot, ["some/dir"], config_file=False)
    assert code == 0 and config.where == Path("some/dir")


def test_required_fields_and_arguments_are_checked_by_click():
    code, error = _run(Toy, ["a"], config_file=False)
    assert code == 2 and "Missing option '--target'" in error.format_message()
    code, error = _run(Toy, ["--target", "t"], config_file=False)
    assert code == 2 and "Missing argument 'words" in error.format_message()


def test_a_config_with_arguments_cannot_take_a_yaml_file():
    with pytest.raises(TypeError, match="config_file=False"):
        config_command(Toy)


class Run(StrictConfig):
    overwrite: bool = Field(False, description="On-only flag.")
    compare_base: bool = Field(False, description="On-only, renamed.")
    name: str = Field(description="Required; may come from the file.")


def test_on_only_flags_left_off_keep_the_file_and_required_fields_may_come_from_it(tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("overwrite: true\ncompare_base: true\nname: x\n")
    code, config = _run(Run, [str(cfg)])
    assert code == 0 and config.overwrite is True and config.compare_base is True
    code, config = _run(Run, [str(cfg), "--name", "y", "--compare-base"])
    assert config.name == "y" and config.compare_base is True


def _one_line_error(capsys, args, match):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_one_shot_commands_errors(capsys):
    _one_line_error(capsys, ["merge", "--output", "x"], "Missing option '--adapter'")
    _one_line_error(capsys, ["classify", "--model", "m"], "Missing argument")
    _one_line_error(capsys, ["generate", "hi", "--max-tokens", "0"], "invalid GenerateConfig")
    _one_line_error(capsys, ["generate", "hi", "--top-p", "1.5"], "top_p")
    _one_line_error(capsys, ["eval", "--max-eval-samples", "0"], "max_eval_samples")
    _one_line_error(capsys, ["eval", "config.yaml"], "unexpected extra argument")


@pytest.fixture
def calls(monkeypatch):
    """The library functions the commands call: {name: [(args, kwargs) of each call]}."""
    seen = {}

    def record(name, result=None):
        return lambda *a, **kw: seen.setdefault(name, []).append((a, kw)) or result

    monkeypatch.setattr("lorakit.eval.evaluate.evaluate", record("evaluate", {}))
    monkeypatch.setattr("lorakit.eval.report.print_eval", record("print_eval"))
    monkeypatch.setattr("lorakit.infer.merge.merge_to_directory", record("merge", "out"))
    monkeypatch.setattr("lorakit.cli.run_demo", record("demo"))
    tokenizer = type("Tok", (), {"chat_template": "x"})()
    loaded = (None, tokenizer, None, ["neg", "pos"])
    monkeypatch.setattr("lorakit.infer.load.load_for_inference", record("load", loaded))
    monkeypatch.setattr("lorakit.infer.generate.stream", record("stream", ["ok"]))
    monkeypatch.setattr("lorakit.infer.classify.classify", record("classify", [{}, {}]))
    monkeypatch.setattr("lorakit.infer.chat.render_chat", record("render", "<chat>"))
    return seen


def test_eval_command_line(calls):
    assert main(["eval", "--adapter", "a", "--split", "train", "--compare-base", "--json"]) == 0
    assert calls["evaluate"] == [
        (
            (),
            dict(
                model="minilm",
                adapter="a",
                data="tweets",
                task=None,
                split="train",
                max_eval_samples=None,
                format="auto",
                precision="auto",
                quantize="none",
                **{f"{role}_column": None for role in DATA_COLUMNS},
                label_column=None,
                objective=None,
                beta=None,
                reference_adapter=None,
                compare_base=True,
            ),
        )
    ]
    assert "print_eval" not in calls  # --json printed JSON instead


def test_generate_and_classify_command_lines(calls, capsys):
    assert main(["generate", "hi there", "--raw", "--temperature", "0.5", "--seed", "3"]) == 0
    assert calls["load"][-1][0][:3] == ("smollm2-135m", None, "causal-lm")
    # one sequence at a time: auto's choice with the 1-row probe (fp32 where bf16 GEMVs lose)
    single = resolve_precision("auto", torch.device("cpu"), single_row=True)
    assert calls["load"][-1][0][3] == single
    assert calls["stream"][-1][0][2:] == ("hi there", 128, 0.5, 1.0, 3) and "render" not in calls
    assert main(["generate", "hi", "--max-tokens", "8"]) == 0  # --chat-template by default
    assert calls["render"][0][0][1] == [{"role": "user", "content": "hi"}]
    assert calls["stream"][-1][0][2:] == ("<chat>", 8, 0.0, 1.0, None)
    capsys.readouterr()
    assert main(["classify", "one", "two", "--adapter", "x", "--precision", "bf16"]) == 0
    assert calls["load"][-1][0][:3] == ("minilm", "x", "classification")
    assert calls["load"][-1][0][3].dtype == torch.bfloat16
    assert calls["classify"][0][0][2:] == (["one", "two"], ["neg", "pos"])
    printed = capsys.readouterr()
    assert printed.out.splitlines() == ['{"text": "one"}', '{"text": "two"}']
    assert printed.err.startswith("precision: bf16 — asked for")  # stdout stays JSON lines
    assert main(["classify", "a", "b", "--adapter", "x"]) == 0  # a batch: the batch probe alone
    assert calls["load"][-1][0][3].name == auto_precision(torch.device("cpu"))[0]


def test_merge_and_demo_command_lines(calls):
    assert main(["merge", "--adapter", "a", "--output", "o", "--dequantize"]) == 0
    merged = dict(adapter="a", output="o", model="minilm", overwrite=False, dequantize=True)
    assert calls["merge"] == [((), merged)]
    assert main(["demo", "--quick", "--overwrite"]) == 0
    assert calls["demo"] == [((), dict(output="runs/demo", overwrite=True, quick=True))]
