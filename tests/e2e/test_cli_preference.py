"""`lorakit train --objective dpo|orpo` and `lorakit eval` on preference pairs, through the
CLI entry point; what a preference objective cannot run with is one line, exit 2, before
any output exists."""

from __future__ import annotations

import json

import pytest

from lorakit.cli import main


def _train(llama_dir, data, out, *extra) -> list[str]:
    return [
        "train",
        *("--model", str(llama_dir), "--task", "causal-lm", "--data", str(data)),
        *("--output", str(out), "--max-steps", "12", "--batch-size", "8", "--lr", "2e-2"),
        *("--max-eval-samples", "8", "--device", "cpu"),
        *extra,
    ]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, llama_model_dir, prefs_jsonl):
    out = tmp_path_factory.mktemp("runs") / "dpo"
    code = main(_train(llama_model_dir, prefs_jsonl, out, "--objective", "dpo", "--beta", "0.5"))
    assert code == 0
    return out


def test_train_dpo_writes_the_pair_metrics(dpo_run, capsys):
    metrics = json.loads((dpo_run / "metrics.json").read_text())
    assert metrics["objective"] == "dpo"
    for split in ("test", "test_before", "validation", "validation_before"):
        scores = metrics[split]
        for name in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"):
            assert isinstance(scores[name], float), (split, name)
        assert scores["chosen_logps"] < 0 and scores["rejected_logps"] < 0
    assert metrics["test"]["reward_accuracy"] > metrics["test_before"]["reward_accuracy"]
    header = (dpo_run / "train_log.csv").read_text().splitlines()[0]
    assert header.endswith(
        "reward_accuracy,reward_margin,chosen_reward,rejected_reward,chosen_logps,rejected_logps"
    )
    saved = json.loads((dpo_run / "adapter/lorakit_train_config.json").read_text())
    assert saved["objective"] == "dpo" and saved["beta"] == 0.5


def test_eval_scores_the_pairs_as_training_did(dpo_run, llama_model_dir, prefs_jsonl, capsys):
    args = ["eval", "--model", str(llama_model_dir), "--adapter", str(dpo_run / "adapter")]
    args += ["--data", str(prefs_jsonl), "--max-eval-samples", "8", "--compare-base", "--json"]
    capsys.readouterr()
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    trained = json.loads((dpo_run / "metrics.json").read_text())["test"]
    # the same pairs, beta (from the adapter's training config) and reference (the base)
    for name in ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"):
        assert result["metrics"][name] == pytest.approx(trained[name], abs=1e-5), name
    assert result["base_metrics"]["reward_margin"] == 0.0  # the base is its own reference
    assert main(args[:-1]) == 0  # the table
    table = capsys.readouterr().out
    assert "reward_accuracy" in table and "chosen_logps" in table


def test_eval_against_a_reference_adapter(dpo_run, llama_model_dir, prefs_jsonl, capsys):
    adapter = str(dpo_run / "adapter")
    args = ["eval", "--model", str(llama_model_dir), "--adapter", adapter, "--json"]
    args += ["--data", str(prefs_jsonl), "--max-eval-samples", "8", "--beta", "0.2"]
    capsys.readouterr()
    assert main([*args, "--reference-adapter", adapter]) == 0
    itself = json.loads(capsys.readouterr().out)["metrics"]
    # measured against itself every reward is 0; against the base (the default) it is not
    assert itself["reward_margin"] == 0.0 and itself["chosen_reward"] == 0.0
    assert main(args) == 0
    base = json.loads(capsys.readouterr().out)["metrics"]
    trained = json.loads((dpo_run / "metrics.json").read_text())["test"]
    assert base["chosen_logps"] == pytest.approx(itself["chosen_logps"], abs=1e-5)
    # --beta 0.2 against the run's 0.5: the same log-probs, rewards scaled by 0.4
    assert base["reward_margin"] == pytest.approx(0.4 * trained["reward_margin"], rel=1e-4)


def test_eval_reads_renamed_columns_and_a_forced_format(
    dpo_run, llama_model_dir, prefs_jsonl, tmp_path, capsys
):
    renamed = tmp_path / "renamed.jsonl"
    with open(prefs_jsonl) as src, open(renamed, "w") as dst:
        for line in src:
            row = json.loads(line)
            new = {"question": row["prompt"], "good": row["chosen"], "bad": row["rejected"]}
            dst.write(json.dumps(new) + "\n")
    base = ["eval", "--model", str(llama_model_dir), "--adapter", str(dpo_run / "adapter")]
    base += ["--max-eval-samples", "8", "--json"]
    capsys.readouterr()
    assert main([*base, "--data", str(prefs_jsonl)]) == 0
    plain = json.loads(capsys.readouterr().out)["metrics"]
    args = [*base, "--data", str(renamed), "--prompt-column", "question"]
    args += ["--chosen-column", "good", "--rejected-column", "bad"]
    for extra in ((), ("--format", "preference")):
        assert main([*args, *extra]) == 0
        mapped = json.loads(capsys.readouterr().out)["metrics"]
        # the same pairs, in the same splits: the same scores
        assert mapped["pairs"] == plain["pairs"] == 8
        for name in ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"):
            assert mapped[name] == pytest.approx(plain[name], abs=1e-6), name
    # without the renames, or with a format the columns do not fit: one line, exit 2
    for bad, match in (
        ([*base, "--data", str(renamed)], "no data format fits"),
        ([*args, "--format", "prompt-response"], "does not hold the prompt-response format"),
        ([*args, "--messages-column", "chat"], "no column 'chat' (--messages-column)"),
    ):
        code = main(bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0], err


def test_eval_refuses_pair_options_without_pairs(llama_model_dir, qa_jsonl, capsys):
    args = ["eval", "--model", str(llama_model_dir), "--data", str(qa_jsonl), "--beta", "0.2"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--beta score preference pairs" in err[0], err


def _fails(capsys, args, match, out):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "—" in err[0], err
    assert match in err[0], err[0]
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize(
    "extra, match",
    [
        (("--objective", "dpo", "--packing"), "drop --packing"),
        (("--objective", "dpo", "--method", "full"), "--method lora or dora"),
        (("--objective", "dpo", "--init", "pissa"), "PiSSA"),
        (("--objective", "dpo", "--label-smoothing", "0.6"), "label_smoothing"),
        (("--objective", "orpo", "--beta", "0"), "beta"),
        (("--objective", "dpo", "--init-adapter", "no/such/adapter"), "no/such/adapter"),
    ],
)
def test_refusals(capsys, tmp_path, llama_model_dir, prefs_jsonl, extra, match):
    out = tmp_path / "out"
    _fails(capsys, _train(llama_model_dir, prefs_jsonl, out, *extra), match, out)


def test_preference_objective_on_other_data_or_tasks(
    capsys, tmp_path, llama_model_dir, bert_dir, qa_jsonl, sentiment_csv
):
    out = tmp_path / "out"
    not_pairs = _train(llama_model_dir, qa_jsonl, out, "--objective", "orpo")
    _fails(capsys, not_pairs, "holds the prompt-response format", out)
    classifier = ["train", "--model", str(bert_dir), "--data", str(sentiment_csv)]
    classifier += ["--text-column", "review", "--label-column", "mood", "--output", str(out)]
    _fails(capsys, [*classifier, "--objective", "dpo"], "--task causal-lm", out)
    tweets = _train(llama_model_dir, "tweets", out, "--objective", "dpo")
    _fails(capsys, tweets, "'tweets' holds none", out)


def test_init_adapter_refusals(capsys, tmp_path, dpo_run, llama_model_dir, prefs_jsonl):
    out, adapter = tmp_path / "out", str(dpo_run / "adapter")
    start = ("--objective", "dpo", "--init-adapter", adapter)
    # the adapter decides LoRA or DoRA; a method that contradicts it is refused, not ignored
    dora = _train(llama_model_dir, prefs_jsonl, out, *start, "--method", "dora")
    _fails(capsys, dora, "is a plain LoRA adapter — drop --method dora", out)
    full = _train(llama_model_dir, prefs_jsonl, out, *start, "--method", "full")
    _fails(capsys, full, "an adapter continues as an adapter", out)
    # --overwrite never deletes the adapter a run starts from
    inside = _train(llama_model_dir, prefs_jsonl, dpo_run, *start, "--overwrite")
    code = main(inside)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the init adapter" in err[0], err
    assert (dpo_run / "adapter/adapter_model.safetensors").is_file()
