"""`lorakit train` on the data formats: a real run on an Alpaca file, the flags, and the errors."""

import json

import pytest
import yaml

from lorakit.cli import main


def _alpaca(path, n=16):
    path.write_text("".join(
        json.dumps({"instruction": f"Spell {w}.", "input": "", "output": " ".join(w)}) + "\n"
        for w in [f"cat{i}" for i in range(n)]
    ))  # fmt: skip
    return path


@pytest.mark.slow
def test_train_smollm2_on_an_alpaca_file(tmp_path, smollm2, monkeypatch, capsys):
    monkeypatch.setenv("LORAKIT_CACHE", str(smollm2["root"]))  # this session's conversion
    out = tmp_path / "run"
    code = main(
        [
            "train", "--task", "causal-lm", "--model", "smollm2-135m",
            "--data", str(_alpaca(tmp_path / "alpaca.jsonl")), "--output", str(out),
            "--max-steps", "1", "--batch-size", "2", "--max-length", "96",
            "--max-eval-samples", "2", "--targets", "q_proj,v_proj", "--r", "2",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["task"] == "causal-lm"
    assert metrics["test"]["eval_tokens"] > 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # one data source is recorded as the plain string it always was
    assert json.loads((out / "config.json").read_text())["data"] == str(tmp_path / "alpaca.jsonl")


def _one_error(capsys, args, *needles):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]


def test_no_format_fits_is_one_error_line(tmp_path, llama_model_dir, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    out = tmp_path / "out"
    args = ["train", "--task", "causal-lm", "--model", str(llama_model_dir), "--data", str(data),
            "--output", str(out), "--max-steps", "1"]  # fmt: skip
    _one_error(capsys, args, "qa.jsonl: no data format fits its columns (question, answer)",
               "alpaca (instruction, output, [input], [system])")  # fmt: skip
    assert not out.exists()
    # --format that does not fit the file, and a mapping that does
    _one_error(capsys, [*args, "--format", "alpaca"], "does not hold the alpaca format")
    mapped = [*args, "--prompt-column", "question", "--response-column", "answer"]
    assert main([*mapped, "--print-config"]) == 0


def test_repeated_data_and_weights_flags(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    args = ["train", "--task", "causal-lm", "--data", str(a), "--data", str(b),
            "--data-weights", "1", "--data-weights", "3", "--format", "alpaca",
            "--messages-column", "dialog", "--print-config"]  # fmt: skip
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"] == [str(a), str(b)] and printed["data_weights"] == [1.0, 3.0]
    assert printed["format"] == "alpaca" and printed["messages_column"] == "dialog"
    one_weight = ["train", "--data", str(a), "--data", str(b), "--data-weights", "1"]
    _one_error(capsys, one_weight, "1 data_weights for 2 data sources")
