"""`train()` with --objective dpo / orpo on a tiny Llama: held-out pairs before and after,
the logged statistics, --init-adapter (the SFT adapter as start and reference) on a
quantized base, and exact resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit.train.loop as loop
from lorakit.config import TrainConfig
from lorakit.errors import ConfigError
from lorakit.eval.preference import reference_logps
from lorakit.eval.preference_loss import METRICS
from lorakit.train import train
from lorakit.train.entry import summary

QUIET = dict(progress=False, log=lambda *a: None)


def _config(tmp_path, llama_dir, prefs, name, **kw):
    base = dict(
        model=str(llama_dir),
        task="causal-lm",
        data=str(prefs),
        objective="dpo",
        output=str(tmp_path / name),
        max_steps=20,
        batch_size=8,
        lr=2e-2,
        beta=0.5,
        max_eval_samples=12,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def _log(out) -> list[dict]:
    with open(out / "train_log.csv") as f:
        return list(csv.DictReader(f))


def _gap(scores: dict) -> float:
    return scores["chosen_logps"] - scores["rejected_logps"]


def test_dpo_raises_held_out_reward_accuracy(tmp_path, llama_model_dir, prefs_jsonl):
    metrics = train(_config(tmp_path, llama_model_dir, prefs_jsonl, "dpo"), **QUIET)
    before, after = metrics["test_before"], metrics["test"]
    # at the start the model is its own reference (the adapter's B is 0): every reward is 0
    for name in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"):
        assert before[name] == 0.0, name
    assert before["preference_loss"] == pytest.approx(0.6931472, abs=1e-6)  # log 2
    assert after["pairs"] == before["pairs"] == 12
    assert after["reward_accuracy"] >= before["reward_accuracy"] + 0.8
    assert after["reward_margin"] > 1.0 and after["preference_loss"] < 0.3
    # the shouted answer became more likely than the quiet one, relative to the start
    assert _gap(after) > _gap(before) + 5
    assert metrics["validation_before"]["reward_accuracy"] == 0.0
    assert metrics["validation"]["reward_accuracy"] >= 0.8
    assert metrics["objective"] == "dpo" and "perplexity" in metrics["test"]
    saved = json.loads((tmp_path / "dpo/metrics.json").read_text())
    assert saved["test"]["reward_accuracy"] == after["reward_accuracy"]
    rows = _log(tmp_path / "dpo")
    assert len(rows) == 20 and all(name in rows[0] for name in METRICS)
    assert float(rows[0]["reward_accuracy"]) == 0.0 and float(rows[0]["reward_margin"]) == 0.0
    assert float(rows[-1]["reward_accuracy"]) > 0.5  # the training pairs' statistics moved too
    assert float(rows[-1]["val_metric"]) == metrics["validation"]["reward_accuracy"]
    assert "test reward_accuracy" in summary(metrics, "out")
    assert (tmp_path / "dpo/adapter/adapter_model.safetensors").is_file()


def test_orpo_raises_held_out_reward_accuracy(tmp_path, llama_model_dir, prefs_jsonl):
    cfg = _config(tmp_path, llama_model_dir, prefs_jsonl, "orpo", objective="orpo")
    metrics = train(cfg, **QUIET)
    before, after = metrics["test_before"], metrics["test"]
    # no reference: the rewards are lambda * mean log-prob, not 0 at the start
    assert before["chosen_reward"] == pytest.approx(0.1 * before["chosen_logps"])
    assert before["reward_accuracy"] <= 0.75
    assert after["reward_accuracy"] >= 0.9 and after["reward_margin"] > before["reward_margin"]
    # the NLL half of ORPO: the chosen answers' per-token log-prob rose
    assert after["chosen_logps"] > before["chosen_logps"] + 1
    assert float(_log(tmp_path / "orpo")[-1]["chosen_reward"]) != 0


def test_dpo_from_an_sft_adapter_on_an_int8_base(tmp_path, llama_model_dir, prefs_jsonl):
    sft = _config(tmp_path, llama_model_dir, prefs_jsonl, "sft", objective="sft", r=4, max_steps=6)
    train(sft, **QUIET)
    start = tmp_path / "sft/adapter"
    dpo = _config(
        tmp_path,
        llama_model_dir,
        prefs_jsonl,
        "dpo",
        init_adapter=str(start),
        quantize="int8",
        max_steps=10,
    )
    metrics = train(dpo, **QUIET)
    # the frozen copy of the SFT adapter is the reference: identical to the policy at first
    assert metrics["test_before"]["reward_margin"] == 0.0
    assert metrics["test"]["reward_accuracy"] >= 0.8
    a, b = (
        load_file(start / "adapter_model.safetensors"),
        load_file(tmp_path / "dpo/adapter/adapter_model.safetensors"),
    )
    assert a.keys() == b.keys()  # the SFT adapter's own modules and rank (r=4, not dpo's 8)
    assert all(a[k].shape == b[k].shape for k in a)
    assert max((a[k] - b[k]).abs().max() for k in a) > 1e-3  # it trained from there
    saved = json.loads((tmp_path / "dpo/adapter/adapter_config.json").read_text())
    assert saved["r"] == 4
    # a resume refuses a changed starting adapter (fingerprint.json records its files)
    weights = {k: v + 1 for k, v in a.items()}
    save_file(weights, str(start / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="init adapter changed"):
        train(dpo.model_copy(update={"resume": True}), **QUIET)


def test_killed_dpo_run_resumes_to_the_same_adapter(
    tmp_path, llama_model_dir, prefs_jsonl, monkeypatch
):
    # 16 pairs, 2 micro-batches an epoch: steps 4-6 (after the resume) reuse the reference
    # log-probs computed in epoch 0, which the checkpoint must carry; dropout: its RNG too
    cfg = dict(max_steps=6, save_every=3, dropout=0.1, max_train_samples=16)
    train(_config(tmp_path, llama_model_dir, prefs_jsonl, "a", **cfg), **QUIET)
    step, calls = loop._step, []

    def dies_in_step_5(*args, **kwargs):  # a crash after the checkpoint of step 3
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "_step", dies_in_step_5)
    interrupted = _config(tmp_path, llama_model_dir, prefs_jsonl, "b", **cfg)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, **QUIET)
    monkeypatch.setattr(loop, "_step", step)
    saved = torch.load(tmp_path / "b/checkpoints/step-00000003/optimizer.pt", weights_only=True)[
        "objective"
    ]
    assert saved["known"].all() and saved["train_ref"].shape == (16, 2)
    run = loop.build(interrupted.model_copy(update={"resume": True}), log=lambda *a: None)
    fresh = reference_logps(run.model, run.data.pairs["train"], run.tokenizer.pad_token_id, None)
    torch.testing.assert_close(saved["train_ref"], fresh, rtol=0, atol=1e-5)  # adapter off
    with pytest.raises(ConfigError, match="beta"):  # the objective's fields are the run's
        train(interrupted.model_copy(update={"resume": True, "beta": 0.2}), **QUIET)
    train(interrupted.model_copy(update={"resume": True}), **QUIET)
    a = load_file(tmp_path / "a/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "b/adapter/adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log(tmp_path / "a") == [
        {**row, "tokens_per_s": a_row["tokens_per_s"], "elapsed_s": a_row["elapsed_s"]}
        for row, a_row in zip(_log(tmp_path / "b"), _log(tmp_path / "a"), strict=True)
    ]  # the same losses and statistics, step by step
