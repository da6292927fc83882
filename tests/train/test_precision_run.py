"""Training under --precision bf16 on tiny models: the frozen base stored in bf16, adapters,
heads and optimizer state in fp32, losses that track the fp32 run's, adapters saved in fp32,
and a resumed run that refuses to change precision."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.config import TrainConfig
from lorakit.errors import ConfigError
from lorakit.train import train
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.loop import build


def _quiet(*args, **kwargs):
    pass


def _lm(tmp_path, llama_model_dir, qa_jsonl, name, **fields):
    values = dict(
        model=str(llama_model_dir),
        task="causal-lm",
        data=str(qa_jsonl),
        output=str(tmp_path / name),
        max_steps=8,
        batch_size=8,
        lr=1e-2,  # 3e-2 learns too, but chaotically: runs that far apart are not comparable
        max_length=200,
        max_eval_samples=4,
    )
    return TrainConfig(**{**values, **fields})


def _losses(run_dir) -> list[float]:
    rows = (run_dir / "train_log.csv").read_text().splitlines()[1:]
    return [float(row.split(",")[2]) for row in rows]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_bf16_lora_tracks_fp32_and_keeps_trained_state_in_fp32(
    tmp_path, llama_model_dir, qa_jsonl, method
):
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = _lm(tmp_path, llama_model_dir, qa_jsonl, precision, precision=precision)
        cfg.method = method
        runs[precision] = train(cfg, progress=False, log=_quiet)
    assert runs["bf16"]["precision"] == "bf16" and runs["fp32"]["precision"] == "fp32"
    fp32, bf16 = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    # the same first step up to bf16 rounding of the base, and the same learning after it
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)
    assert sum(bf16[-3:]) / 3 < 0.85 * bf16[0]
    assert sum(bf16[-3:]) / 3 == pytest.approx(sum(fp32[-3:]) / 3, rel=0.05)
    saved = load_file(tmp_path / "bf16/adapter/adapter_model.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    step = list_checkpoints(tmp_path / "bf16/checkpoints")[-1]
    assert json.loads((step / "state.json").read_text())["precision"] == "bf16"
    moments = torch.load(step / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    assert {s["exp_avg"].dtype for s in moments.values()} == {torch.float32}


def test_bf16_run_stores_the_base_in_bf16_and_trains_fp32_adapters(
    tmp_path, llama_model_dir, qa_jsonl
):
    run = build(_lm(tmp_path, llama_model_dir, qa_jsonl, "b", precision="bf16"), log=_quiet)
    trained = {n: p.dtype for n, p in run.model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in run.model.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    assert all(".lora_" in n or ".adapters." in n for n in trained)
    assert set(frozen.values()) == {torch.bfloat16}


def test_bf16_classification_trains_an_fp32_head(tmp_path, bert_dir, sentiment_csv):
    results = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(
            model=str(bert_dir),
            data=str(sentiment_csv),
            text_column="review",
            label_column="mood",
            output=str(tmp_path / precision),
            max_steps=12,
            batch_size=16,
            lr=1e-2,
            precision=precision,
        )
        results[precision] = train(cfg, progress=False, log=_quiet)
    assert results["bf16"]["precision"] == "bf16"
    assert results["bf16"]["test"]["accuracy"] >= results["fp32"]["test"]["accuracy"] - 0.05
    saved = load_file(tmp_path / "bf16/adapter/adapter_model.safetensors")
    head = {k: t.dtype for k, t in saved.items() if "classifier" in k}
    assert head and set(head.values()) == {torch.float32}


def test_bf16_full_fine_tuning_runs_under_autocast_over_fp32_weights(
    tmp_path, llama_model_dir, qa_jsonl
):
    cfg = _lm(tmp_path, llama_model_dir, qa_jsonl, "full", precision="bf16", max_steps=2)
    cfg.method, cfg.lr = "full", 1e-3
    run = build(cfg, log=_quiet)
    assert run.precision.autocast and run.precision.compute_dtype == torch.bfloat16
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}
    metrics = train(
        _lm(
            tmp_path, llama_model_dir, qa_jsonl, "full2", precision="bf16", max_steps=2, lr=1e-3
        ).model_copy(update={"method": "full"}),
        progress=False,
        log=_quiet,
    )
    assert metrics["precision"] == "bf16"
    assert torch.isfinite(torch.tensor(_losses(tmp_path / "full2"))).all()


@pytest.mark.parametrize("quantize", ["int8", "nf4"])
def test_quantized_bases_train_under_bf16(tmp_path, llama_model_dir, qa_jsonl, quantize):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = _lm(
            tmp_path, llama_model_dir, qa_jsonl, f"{quantize}-{precision}", max_steps=3
        ).model_copy(update={"precision": precision, "quantize": quantize})
        metrics = train(cfg, progress=False, log=_quiet)
        assert metrics["precision"] == precision
        losses[precision] = _losses(tmp_path / f"{quantize}-{precision}")
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.03)


def test_fp16_training_is_refused_in_one_line(tmp_path, llama_model_dir, qa_jsonl):
    with pytest.raises(ConfigError, match="fp16 training needs loss scaling"):
        train(_lm(tmp_path, llama_model_dir, qa_jsonl, "h", precision="fp16"), log=_quiet)
    assert not (tmp_path / "h").exists()


def test_resume_keeps_the_checkpoints_precision_and_refuses_another(
    tmp_path, llama_model_dir, qa_jsonl
):
    cfg = _lm(tmp_path, llama_model_dir, qa_jsonl, "r", max_steps=2, save_every=1, precision="auto")
    first = train(cfg, progress=False, log=_quiet)
    # auto's probe read the other way on resume (another machine, or a busy one): the
    # checkpoint says the steps so far were computed in the other precision
    other = "bf16" if first["precision"] == "fp32" else "fp32"
    last = list_checkpoints(tmp_path / "r/checkpoints")[-1]
    state = json.loads((last / "state.json").read_text())
    (last / "state.json").write_text(json.dumps({**state, "precision": other}))
    resumed = train(cfg.model_copy(update={"resume": True}), progress=False, log=_quiet)
    assert resumed["precision"] == other
    assert resumed["precision_reason"] == f"the run being resumed computed in {other}"
    # a precision other than the run's own is refused, in one line
    asked = cfg.model_copy(update={"resume": True, "precision": first["precision"]})
    with pytest.raises(ConfigError, match=r"--resume with a different config \(precision\)"):
        train(asked, progress=False, log=_quiet)
