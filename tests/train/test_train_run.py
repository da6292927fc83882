"""`train()` end to end on tiny on-disk models: outputs, metrics, methods, losses."""

import json

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.config import TrainConfig
from lorakit.train import train


def _config(tmp_path, bert_dir, sentiment_csv, **kw):
    base = dict(
        model=str(bert_dir),
        task="classification",
        data=str(sentiment_csv),
        text_column="review",
        label_column="mood",
        output=str(tmp_path / "run"),
        max_steps=40,
        batch_size=16,
        lr=1e-2,
        save_every=20,
        targets="all-linear",
    )
    return TrainConfig(**{**base, **kw})


def test_classification_run_writes_everything_and_learns(tmp_path, bert_dir, sentiment_csv):
    metrics = train(
        _config(tmp_path, bert_dir, sentiment_csv),
        progress=False,
        baseline=True,
        log=lambda *a: None,
    )
    out = tmp_path / "run"
    for name in [
        "config.json",
        "metrics.json",
        "train_log.csv",
        "loss_lr.png",
        "confusion_matrix.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/labels.json",
        "adapter/lorakit_train_config.json",
    ]:
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    saved = json.loads((out / "metrics.json").read_text())
    for key in [
        "train_seconds",
        "train_tokens_per_s",
        "train_samples_per_s",
        "peak_memory_mb",
        "trainable_params",
        "total_params",
    ]:
        assert saved[key] > 0, key
    assert (
        saved["steps"] == 40 and 38 * 16 <= saved["train_samples"] <= 40 * 16
    )  # epoch ends: partial batches
    assert json.loads((out / "adapter/labels.json").read_text()) == ["neg", "pos"]
    assert metrics["test"]["accuracy"] >= 0.9 > metrics["test_before"]["accuracy"] + 0.2
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss,lr") and len(log) == 41
    # the saved adapter carries the trained head: it reloads to the same predictions
    from lorakit.eval.evaluate import evaluate

    again = evaluate(
        str(bert_dir),
        str(sentiment_csv),
        adapter=str(out / "adapter"),
        text_column="review",
        label_column="mood",
    )
    assert again["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


@pytest.mark.parametrize("method", ["full", "head", "dora"])
def test_methods_share_the_loop(tmp_path, bert_dir, sentiment_csv, method):
    metrics = train(
        _config(tmp_path, bert_dir, sentiment_csv, method=method, max_steps=4),
        progress=False,
        log=lambda *a: None,
    )
    total = metrics["total_params"]
    head = 2 * 32 + 2
    if method == "full":
        assert metrics["trainable_params"] == total
        assert (tmp_path / "run/model/model.safetensors").is_file()
    elif method == "head":
        assert metrics["trainable_params"] == head
    else:
        cfg = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
        assert cfg["use_dora"] is True
        assert head < metrics["trainable_params"] < total


def test_lora_plus_gives_B_a_larger_learning_rate(tmp_path, bert_dir, sentiment_csv):
    from lorakit.train.optim import build_optimizer

    model = lorakit.inject(
        torch.nn.Sequential(torch.nn.Linear(4, 4)), lorakit.LoraConfig(target_modules=["0"])
    )
    opt = build_optimizer(model, 1e-3, lora_plus_ratio=16)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [1e-3, 16e-3]


def test_causal_lm_loss_only_at_labelled_positions_equals_full_loss(llama_model_dir):
    from transformers import AutoModelForCausalLM

    from lorakit.eval.loss import causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(llama_model_dir)
    ids = torch.randint(0, 250, (2, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 8:] = -100
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    ours = causal_lm_loss(model, batch)
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)


def test_causal_lm_prompt_response_learns(tmp_path, llama_model_dir, qa_jsonl):
    cfg = TrainConfig(
        model=str(llama_model_dir),
        task="causal-lm",
        data=str(qa_jsonl),
        output=str(tmp_path / "lm"),
        max_steps=40,
        batch_size=8,
        lr=3e-2,
        max_length=200,
        max_eval_samples=12,
    )
    metrics = train(cfg, progress=False, log=lambda *a: None)
    log = (tmp_path / "lm/train_log.csv").read_text().splitlines()[1:]
    losses = [float(row.split(",")[2]) for row in log]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5  # from ln(259) = 5.56 at the start
    for key in ("perplexity", "exact_match", "rouge_l", "bleu"):
        assert key in metrics["test"]
    tensors = load_file(tmp_path / "lm/adapter/adapter_model.safetensors")
    assert any(k.endswith("q_proj.lora_A.weight") for k in tensors)


def test_packing_trains_on_packed_rows(tmp_path, llama_model_dir, qa_jsonl):
    cfg = TrainConfig(
        model=str(llama_model_dir),
        task="causal-lm",
        data=str(qa_jsonl),
        output=str(tmp_path / "p"),
        max_steps=3,
        batch_size=2,
        max_length=256,
        packing=True,
        max_eval_samples=4,
    )
    metrics = train(cfg, progress=False, log=lambda *a: None)
    # 2 rows of 128 tokens per step, each holding several documents
    assert metrics["train_samples"] == 6 and metrics["train_tokens"] > 6 * 30
