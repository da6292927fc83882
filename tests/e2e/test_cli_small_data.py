"""Data too small to fill every split (a 3-row file): `lorakit train` trains, says which
held-out split is empty and marks its metrics {"examples": 0} (no traceback, no made-up
number); `lorakit eval` on an empty split is one line, exit 2."""

from __future__ import annotations

import json

import pytest

from lorakit.cli import main

WORDS = ["good", "great", "lovely", "happy", "fine", "bad", "awful", "sad", "angry", "poor"]
# rows 1-3 hash into train (validation and test empty); rows 0-2: train 2, validation 1
ALL_TRAIN, NO_TEST = range(1, 4), range(3)


def _write(path, rows, pairs: bool):
    with open(path, "w") as f:
        for i in rows:
            w = WORDS[i % len(WORDS)]
            row = {"prompt": f"Shout {w} #{i}"}
            row |= {"chosen": w.upper(), "rejected": w} if pairs else {"response": w.upper()}
            f.write(json.dumps(row) + "\n")
    return path


def _train(llama_dir, data, out, *extra) -> list[str]:
    return [
        "train",
        *("--model", str(llama_dir), "--task", "causal-lm", "--data", str(data)),
        *("--output", str(out), "--max-steps", "2", "--batch-size", "2", "--device", "cpu"),
        *extra,
    ]


@pytest.mark.parametrize(
    "objective, rows, sizes",
    [
        ("sft", ALL_TRAIN, "train 3 / validation 0 / test 0"),
        ("sft", NO_TEST, "train 2 / validation 1 / test 0"),
        ("dpo", ALL_TRAIN, "train 3 / validation 0 / test 0"),
        ("orpo", NO_TEST, "train 2 / validation 1 / test 0"),
    ],
)
def test_train_on_a_file_too_small_for_every_split(
    tmp_path, llama_model_dir, capsys, objective, rows, sizes
):
    data = _write(tmp_path / "tiny.jsonl", rows, pairs=objective != "sft")
    out = tmp_path / "run"
    # --eval-every 1: the validation metric is asked for during training too
    code = main(_train(llama_model_dir, data, out, "--objective", objective, "--eval-every", "1"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert f"using {sizes}" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    empty = {"examples": 0} | ({"pairs": 0} if objective != "sft" else {})
    for split in ("validation", "test"):
        if f"{split} 0" in sizes:
            assert f"note: the {split} split is empty" in captured.out
            assert metrics[split] == empty, split
        else:
            assert f"note: the {split} split is empty" not in captured.out
            assert metrics[split]  # scored as usual
    if objective != "sft":
        assert metrics["test_before"] == {"pairs": 0}
    assert "no test scores (the test split is empty)" in captured.out
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert len((out / "train_log.csv").read_text().splitlines()) == 3  # header + 2 steps

    # lorakit eval on the empty split: one line, exit 2; the training split still scores
    args = ["eval", "--model", str(llama_model_dir), "--adapter", str(out / "adapter")]
    args += ["--data", str(data), "--json"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: the test split of") and "--split train" in err[0], err
    assert main([*args, "--split", "train"]) == 0
    scored = json.loads(capsys.readouterr().out)["metrics"]
    assert scored["eval_tokens"] > 0
    if objective != "sft":
        assert scored["pairs"] == int(sizes.split()[1])
