"""Every command end to end on tiny on-disk models, through the CLI entry point."""

import json

import pytest
import torch

from lorakit.cli import main


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, bert_dir, sentiment_csv):
    out = tmp_path_factory.mktemp("runs") / "cls"
    code = main(
        [
            "train",
            "--model",
            str(bert_dir),
            "--data",
            str(sentiment_csv),
            "--text-column",
            "review",
            "--label-column",
            "mood",
            "--output",
            str(out),
            "--max-steps",
            "40",
            "--lr",
            "1e-2",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, llama_model_dir, qa_jsonl):
    out = tmp_path_factory.mktemp("runs") / "lm"
    code = main(
        [
            "train",
            "--model",
            str(llama_model_dir),
            "--task",
            "causal-lm",
            "--data",
            str(qa_jsonl),
            "--output",
            str(out),
            "--max-steps",
            "6",
            "--max-length",
            "200",
            "--max-eval-samples",
            "4",
        ]
    )
    assert code == 0
    return out


def test_train_prints_summary(classifier_run, capsys):
    metrics = json.loads((classifier_run / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["test"]["accuracy"] > 0.85


def test_eval_compare_base_json(classifier_run, bert_dir, sentiment_csv, capsys):
    code = main(
        [
            "eval",
            "--model",
            str(bert_dir),
            "--adapter",
            str(classifier_run / "adapter"),
            "--data",
            str(sentiment_csv),
            "--text-column",
            "review",
            "--label-column",
            "mood",
            "--compare-base",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    adapted, base = result["metrics"], result["base_metrics"]
    assert adapted["accuracy"] > base["accuracy"] + 0.2
    assert {
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "latency_p50_ms",
        "latency_p95_ms",
        "peak_memory_mb",
    } <= adapted.keys()
    assert sum(map(sum, adapted["confusion_matrix"])) == adapted["examples"]


def test_eval_table(classifier_run, bert_dir, sentiment_csv, capsys):
    assert (
        main(
            [
                "eval",
                "--model",
                str(bert_dir),
                "--adapter",
                str(classifier_run / "adapter"),
                "--data",
                str(sentiment_csv),
                "--text-column",
                "review",
                "--label-column",
                "mood",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy" in out and "macro_f1" in out and "precision" in out


def test_classify(classifier_run, bert_dir, capsys):
    assert (
        main(
            [
                "classify",
                "great, item 1",
                "awful, item 2",
                "--model",
                str(bert_dir),
                "--adapter",
                str(classifier_run / "adapter"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_merge_classifier_loads_without_lorakit(classifier_run, bert_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorakit.infer.load import load_for_inference

    out = tmp_path / "merged"
    assert (
        main(
            [
                "merge",
                "--model",
                str(bert_dir),
                "--adapter",
                str(classifier_run / "adapter"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    model, _, _, _ = load_for_inference(str(bert_dir), classifier_run / "adapter")
    enc = tok(["great, item 5", "sad, item 7"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, model(**enc).logits, atol=1e-5)
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    # an existing output is refused without --overwrite
    assert (
        main(
            [
                "merge",
                "--model",
                str(bert_dir),
                "--adapter",
                str(classifier_run / "adapter"),
                "--output",
                str(out),
            ]
        )
        == 2
    )


def test_merge_causal_lm(lm_run, llama_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lorakit.infer.load import load_for_inference

    out = tmp_path / "merged-lm"
    assert (
        main(
            [
                "merge",
                "--model",
                str(llama_model_dir),
                "--adapter",
                str(lm_run / "adapter"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    model, _, _, _ = load_for_inference(str(llama_model_dir), lm_run / "adapter")
    ids = torch.randint(0, 250, (2, 16))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-5)


def test_generate_streams_and_matches_greedy(lm_run, llama_model_dir, capsys):
    from lorakit.eval.passes import generate_texts
    from lorakit.infer.chat import render_chat
    from lorakit.infer.load import load_for_inference

    assert (
        main(
            [
                "generate",
                "Shout good",
                "--model",
                str(llama_model_dir),
                "--adapter",
                str(lm_run / "adapter"),
                "--max-tokens",
                "8",
                # load_for_inference's fp32: auto would time a 1-row matmul, bf16 some runs
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip()
    model, tok, _, _ = load_for_inference(str(llama_model_dir), lm_run / "adapter")
    prompt = render_chat(tok, [{"role": "user", "content": "Shout good"}])
    expected, _ = generate_texts(model, tok, [prompt], max_new_tokens=8)
    assert printed == expected[0]


def test_chat_reads_turns_until_exit(lm_run, llama_model_dir, monkeypatch, capsys):
    turns = iter(["hello", "", "again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(turns))
    assert (
        main(
            [
                "chat",
                "--model",
                str(llama_model_dir),
                "--adapter",
                str(lm_run / "adapter"),
                "--max-tokens",
                "4",
            ]
        )
        == 0
    )
    assert next(turns, None) is None  # every turn was read, up to /exit
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out.strip()) > 0


def test_inspect_run_adapter(classifier_run, capsys):
    assert main(["inspect", str(classifier_run / "adapter")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task_type"] == "SEQ_CLS" and summary["modules_to_save"] == ["classifier"]
