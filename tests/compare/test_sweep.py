"""The sweep runner: planning, running, reuse / resume of runs, output-directory rules."""

import json
import os

import pytest

import lorakit.train
from lorakit.compare import CompareConfig, run_sweep
from lorakit.compare.sweep import detect_attention_targets, open_output, plan, train_or_reuse
from lorakit.config import TrainConfig
from lorakit.errors import ConfigError, LorakitError, OutputExistsError
from tiny_models import tiny_bert_cls, tiny_gpt2, tiny_llama

RUNS = [
    "head-seed0",
    "lora-attention-r1-seed0",
    "lora-attention-r4-seed0",
    "lora-all-linear-r1-seed0",
    "lora-all-linear-r4-seed0",
    "dora-all-linear-r2-seed0",
    "full-seed0",
]


def _cfg(tmp_path, bert_dir, sentiment_csv, **kw) -> CompareConfig:
    base = dict(
        model=str(bert_dir),
        data=str(sentiment_csv),
        text_column="review",
        label_column="mood",
        output=str(tmp_path / "sweep"),
        max_steps=3,
        max_eval_samples=24,
        latency_samples=2,
        isolate=False,
    )
    return CompareConfig(**{**base, **kw})


def test_sweep_runs_every_method_and_writes_everything(tiny_sweep):
    results = json.loads((tiny_sweep / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == RUNS
    assert results["target_sets"] == {"attention": ["query", "value"], "all-linear": "all-linear"}
    for name in ["results.csv", "report.md", "compare_config.json"] + [
        f"{p}.png" for p in ("metric_vs_params", "metric_vs_rank", "memory_vs_rank", "time_vs_rank")
    ]:
        assert (tiny_sweep / name).is_file(), name
    rows = {r["group"]: r for r in results["runs"]}
    # LoRA on q and v of 2 layers (in = out = 32) plus the classifier head (2 x 32 + 2)
    head = 66
    assert rows["head"]["trainable_params"] == head
    assert rows["lora-attention-r1"]["trainable_params"] == 2 * 2 * 1 * 64 + head
    assert rows["lora-attention-r4"]["trainable_params"] == 2 * 2 * 4 * 64 + head
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    assert rows["full"]["latency_merged_ms"] == rows["full"]["latency_unmerged_ms"] > 0
    for row in results["runs"]:
        assert row["steps"] == 3 and row["tokens_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert 0 <= row["accuracy"] <= 1 and "macro_f1" in row
        assert row["latency_unmerged_ms"] > 0 and row["latency_merged_ms"] > 0
        run = tiny_sweep / "runs" / row["name"]
        assert (run / "metrics.json").is_file() and (run / "latency.json").is_file()
        assert not (run / "checkpoints").exists()  # finished runs are reused, never resumed
    csv_lines = (tiny_sweep / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(RUNS) and csv_lines[0].startswith("name,group,method")
    # same data, steps and seed for every run; lr per method; alpha = 2r
    configs = {n: json.loads((tiny_sweep / "runs" / n / "config.json").read_text()) for n in RUNS}
    assert {(c["data"], c["max_steps"], c["seed"]) for c in configs.values()} == {
        (configs["full-seed0"]["data"], 3, 0)
    }
    assert configs["full-seed0"]["lr"] is None  # TrainConfig's 5e-5 for full fine-tuning
    assert configs["head-seed0"]["lr"] == 1e-2
    assert configs["lora-attention-r4-seed0"]["alpha"] == 8
    assert configs["dora-all-linear-r2-seed0"]["method"] == "dora"


def test_plan_seeds_lrs_and_names(tmp_path):
    cfg = CompareConfig(output=str(tmp_path), ranks=[8, 2], seeds=2, full_lr=1e-4, dora_rank=4)
    runs = plan(cfg, {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear"})
    names = [r.name for r in runs]
    assert names[:7] == [
        "head-seed0",
        "lora-qv-r2-seed0",
        "lora-qv-r8-seed0",
        "lora-all-linear-r2-seed0",
        "lora-all-linear-r8-seed0",
        "dora-all-linear-r4-seed0",
        "full-seed0",
    ]
    assert names[7:] == [n.replace("seed0", "seed1") for n in names[:7]]
    assert {r.config.seed for r in runs} == {0, 1}
    full = next(r for r in runs if r.method == "full")
    assert full.config.resolved_lr() == 1e-4 and runs[1].config.resolved_lr() == 1e-3
    assert runs[1].config.targets == ["q_proj", "v_proj"] and runs[1].config.alpha == 4
    assert runs[2].config.output == str(tmp_path / "runs" / "lora-qv-r8-seed0")
    own = CompareConfig(target_sets={"a": ["q"], "b": ["v"]}, ranks=[], include_full=False)
    assert [r.name for r in plan(own, own.target_sets)] == ["head-seed0", "dora-b-r8-seed0"]
    causal = CompareConfig(task="causal-lm", ranks=[], dora_rank=None)
    assert [r.name for r in plan(causal, {})] == ["full-seed0"]  # no head run for causal LM
    with pytest.raises(ConfigError, match="no runs"):
        plan(CompareConfig(ranks=[], dora_rank=None, include_full=False, include_head=False), {})


def test_attention_names_are_detected_across_architectures():
    assert detect_attention_targets(tiny_bert_cls()) == ["query", "value"]
    assert detect_attention_targets(tiny_llama()) == ["q_proj", "v_proj"]
    assert detect_attention_targets(tiny_gpt2()) == ["c_attn"]


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="dora_targets 'x' is not one of"):
        CompareConfig(dora_targets="x")
    with pytest.raises(ConfigError, match="ranks must be positive"):
        CompareConfig(ranks=[0, 4])
    with pytest.raises(ConfigError, match="r cannot be set under train"):
        CompareConfig(train={"r": 4})
    with pytest.raises(ConfigError, match="bogus: unknown key"):
        CompareConfig(train={"bogus": 1})
    assert CompareConfig(train={"grad_accum": 2}).run_config("x", r=4).grad_accum == 2


def test_yaml_file_and_flags(tmp_path):
    from lorakit.compare import RankProbeConfig
    from lorakit.compare.config import resolve

    path = tmp_path / "sweep.yaml"
    path.write_text("ranks: [8, 2]\nseeds: 2\ntarget_sets: {qv: [query, value]}\n")
    cfg = resolve(CompareConfig, path, {"ranks": "1,4", "include_full": False, "overwrite": False})
    assert (cfg.ranks, cfg.seeds, cfg.include_full) == ([1, 4], 2, False)
    with pytest.raises(ConfigError, match=r"--ranks '1,a' is not a list of integers"):
        resolve(CompareConfig, None, {"ranks": "1,a"})
    path.write_text("rankz: [1]\n")
    with pytest.raises(ConfigError, match=r"rankz: unknown key .* in .*sweep\.yaml"):
        resolve(CompareConfig, path, {})
    probe = resolve(RankProbeConfig, None, {"targets": "query,value", "rank": 16})
    assert probe.targets == ["query", "value"] and probe.run_config("x", r=16).targets == [
        "query",
        "value",
    ]


def test_output_directory_rules(tmp_path):
    out = tmp_path / "sweep"
    open_output(out, "c.json", {"ranks": [1], "isolate": True}, overwrite=False)
    # the same settings (how it runs may change) resume; other settings are refused
    open_output(out, "c.json", {"ranks": [1], "isolate": False}, overwrite=False)
    with pytest.raises(OutputExistsError, match=r"other settings \(ranks\) — re-run"):
        open_output(out, "c.json", {"ranks": [2], "isolate": True}, overwrite=False)
    open_output(out, "c.json", {"ranks": [2]}, overwrite=True)
    assert json.loads((out / "c.json").read_text()) == {"ranks": [2]}
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        open_output(other, "c.json", {}, overwrite=False)
    assert (other / "keep.txt").read_text() == "mine"


def test_train_or_reuse_trains_reuses_resumes_restarts(tmp_path, bert_dir, sentiment_csv):
    calls = []
    real = lorakit.train.train

    def counting(cfg, **kw):
        calls.append((cfg.output, cfg.resume, cfg.overwrite))
        return real(cfg, **kw)

    base = dict(
        model=str(bert_dir),
        data=str(sentiment_csv),
        text_column="review",
        label_column="mood",
        max_steps=2,
        save_every=1,
        max_eval_samples=8,
    )
    quiet = dict(log=lambda *a: None)
    cfg = TrainConfig(**base, output=str(tmp_path / "a"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lorakit.train, "train", counting)
        assert train_or_reuse(cfg, **quiet)[1] == "trained"
        assert train_or_reuse(cfg, **quiet)[1] == "reused" and len(calls) == 1
        # killed after its last checkpoint, before metrics.json: resumed, not restarted
        killed = TrainConfig(**base, output=str(tmp_path / "b"))
        real(killed, log=lambda *a: None, progress=False)
        (tmp_path / "b/metrics.json").unlink()
        metrics, status = train_or_reuse(killed, **quiet)
        assert status == "resumed" and calls[-1][1] is True and metrics["steps"] == 2
        # killed before any checkpoint: restarted over the partial directory (lorakit's:
        # marked as a run, so --overwrite may replace it)
        from lorakit.atomic import mark
        from lorakit.train.output_dir import RUN_FILES

        (tmp_path / "c").mkdir()
        mark(tmp_path / "c", "train", RUN_FILES)
        (tmp_path / "c/config.json").write_text("{}")
        cfg_c = TrainConfig(**base, output=str(tmp_path / "c"))
        assert train_or_reuse(cfg_c, **quiet)[1] == "trained" and calls[-1][2] is True
        # a finished run with other settings is not replaced without overwrite
        changed = cfg.model_copy(update={"max_steps": 1})
        with pytest.raises(OutputExistsError, match="other settings"):
            train_or_reuse(changed, **quiet)
        assert train_or_reuse(changed, overwrite=True, **quiet)[1] == "trained"


def test_rerun_after_a_lost_run_retrains_only_that_run(tmp_path, bert_dir, sentiment_csv):
    cfg = _cfg(
        tmp_path,
        bert_dir,
        sentiment_csv,
        ranks=[1, 2],
        target_sets={"qv": ["query", "value"]},
        dora_rank=None,
        include_full=False,
        include_head=False,
    )
    first = run_sweep(cfg, log=lambda *a: None)
    runs = tmp_path / "sweep" / "runs"
    kept = runs / "lora-qv-r2-seed0" / "metrics.json"
    mtime = os.stat(kept).st_mtime_ns
    (runs / "lora-qv-r1-seed0" / "metrics.json").unlink()  # as if killed during its evaluation
    trained = []
    real = lorakit.train.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            lorakit.train, "train", lambda c, **kw: trained.append(c.output) or real(c, **kw)
        )
        second = run_sweep(cfg, log=lambda *a: None)
    assert trained == [str(runs / "lora-qv-r1-seed0")]
    assert os.stat(kept).st_mtime_ns == mtime
    # same seed, same data: the retrained run scores the same
    assert second["runs"][0]["accuracy"] == first["runs"][0]["accuracy"]
    # another sweep in the same directory needs --overwrite; runs it no longer has go
    other = cfg.model_copy(update={"ranks": [2]})
    with pytest.raises(OutputExistsError, match=r"\(ranks\)"):
        run_sweep(CompareConfig(**other.model_dump()), log=lambda *a: None)
    replaced = CompareConfig(**{**other.model_dump(), "overwrite": True})
    assert [r["name"] for r in run_sweep(replaced, log=lambda *a: None)["runs"]] == [
        "lora-qv-r2-seed0"
    ]
    assert sorted(p.name for p in runs.iterdir()) == ["lora-qv-r2-seed0"]
    assert os.stat(kept).st_mtime_ns == mtime  # unchanged settings: reused, not retrained


def test_isolated_runs_train_in_their_own_process(tmp_path, bert_dir, sentiment_csv, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _cfg(
        tmp_path,
        bert_dir,
        sentiment_csv,
        ranks=[2],
        target_sets={"qv": ["query", "value"]},
        dora_rank=None,
        include_full=False,
        include_head=False,
        isolate=True,
    )
    called = []
    monkeypatch.setattr(lorakit.train, "train", lambda *a, **k: called.append(1))
    results = run_sweep(cfg, log=lambda *a: None)
    assert not called  # trained by the child process, not here
    log = (tmp_path / "sweep/logs/lora-qv-r2-seed0.log").read_text()
    assert "trainable params" in log
    assert results["runs"][0]["trainable_params"] == 2 * 2 * 2 * 64 + 66
    # a failing child surfaces as one error naming the run and its log
    (tmp_path / "sweep/runs/lora-qv-r2-seed0/metrics.json").unlink()
    bad = cfg.model_copy(update={"data": str(tmp_path / "gone.csv")})
    from lorakit.compare.sweep import _train_in_child

    child_cfg = plan(bad, {"qv": ["query", "value"]})[0].config.model_copy(
        update={"overwrite": True}
    )
    with pytest.raises(LorakitError, match=r"run lora-qv-r2-seed0 failed: .*gone\.csv.*\(log: "):
        _train_in_child(child_cfg, tmp_path / "child.log")


def test_bad_inputs_write_nothing(tmp_path, bert_dir, sentiment_csv):
    with pytest.raises(LorakitError, match="matches no layer"):
        run_sweep(_cfg(tmp_path, bert_dir, sentiment_csv, target_sets={"x": ["nope"]}))
    with pytest.raises(LorakitError):
        run_sweep(_cfg(tmp_path, bert_dir, tmp_path / "missing.csv"))
    assert not (tmp_path / "sweep").exists()


def test_compare_command_resumes_and_refuses_other_settings(tiny_sweep, tiny_sweep_args, capsys):
    from lorakit.cli import main

    capsys.readouterr()
    metrics = tiny_sweep / "runs" / "full-seed0" / "metrics.json"
    mtime = metrics.stat().st_mtime_ns
    assert main(tiny_sweep_args) == 0  # every run finished: all reused
    out = capsys.readouterr().out
    assert out.count("reused:") == len(RUNS) and str(tiny_sweep / "report.md") in out
    assert metrics.stat().st_mtime_ns == mtime
    i = tiny_sweep_args.index("--ranks")
    other = tiny_sweep_args[: i + 1] + ["2"] + tiny_sweep_args[i + 2 :]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other settings (ranks)" in err and "--overwrite" in err


def test_compare_command_bad_model_is_one_line(tmp_path, data_flags, capsys):
    from lorakit.cli import main

    out = tmp_path / "sweep"
    args = ["compare", *data_flags, "--model", str(tmp_path / "nope"), "--output", str(out)]
    assert main(args) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()


def test_causal_lm_sweep_scores_generation(tmp_path, llama_model_dir, qa_jsonl):
    cfg = CompareConfig(
        model=str(llama_model_dir),
        task="causal-lm",
        data=str(qa_jsonl),
        output=str(tmp_path / "lm"),
        ranks=[2],
        dora_rank=None,
        max_steps=2,
        batch_size=4,
        max_length=200,
        max_eval_samples=4,
        latency_samples=2,
        isolate=False,
    )
    results = run_sweep(cfg, log=lambda *a: None)
    assert results["target_sets"]["attention"] == ["q_proj", "v_proj"]
    assert [r["name"] for r in results["runs"]] == [
        "lora-attention-r2-seed0",
        "lora-all-linear-r2-seed0",
        "full-seed0",
    ]
    assert results["metric"] == "exact_match"
    for row in results["runs"]:
        assert {"exact_match", "rouge_l", "perplexity", "latency_merged_ms"} <= row.keys()
    header = (tmp_path / "lm/report.md").read_text().split("| run |")[1].splitlines()[0]
    assert "exact match" in header and "perplexity" in header and "accuracy" not in header


def test_a_dpo_sweep_scores_pairs_and_leaves_full_fine_tuning_out(
    tmp_path, llama_model_dir, prefs_jsonl
):
    shared = dict(
        model=str(llama_model_dir),
        task="causal-lm",
        data=str(prefs_jsonl),
        ranks=[2, 4],
        target_sets={"qv": ["q_proj", "v_proj"]},
        dora_rank=None,
        max_steps=2,
        batch_size=4,
        max_eval_samples=8,
        latency_samples=2,
        isolate=False,
        train={"objective": "dpo", "beta": 0.5},
    )
    # full fine-tuning has no adapter to switch off for DPO's reference: left out by
    # default, and refused before anything trains when asked for
    with pytest.raises(ConfigError, match="--objective dpo with --method full"):
        plan(CompareConfig(**shared, include_full=True), {"qv": ["q_proj", "v_proj"]})
    orpo = CompareConfig(**{**shared, "train": {"objective": "orpo"}})
    assert plan(orpo, orpo.target_sets)[-1].name == "full-seed0"  # ORPO has no reference
    cfg = CompareConfig(**shared, output=str(tmp_path / "dpo"))
    results = run_sweep(cfg, log=lambda *a: None)
    assert [r["name"] for r in results["runs"]] == ["lora-qv-r2-seed0", "lora-qv-r4-seed0"]
    assert results["metric"] == "reward_accuracy"
    for row in results["runs"]:
        assert 0 <= row["reward_accuracy"] <= 1 and row["test_examples"] == 8
        assert isinstance(row["reward_margin"], float)
        assert (
            json.loads((tmp_path / "dpo/runs" / row["name"] / "config.json").read_text())[
                "objective"
            ]
            == "dpo"
        )
    header = (tmp_path / "dpo/report.md").read_text().split("| run |")[1].splitlines()[0]
    assert "reward accuracy" in header and "reward margin" in header
