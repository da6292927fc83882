"""rank-probe: the spectrum math on known matrices, and the command end to end."""

import json

import pytest
import torch
import yaml

from lorakit.cli import main
from lorakit.compare.rank_probe import (
    effective_rank,
    pow2_ceil,
    recommend,
    update_singular_values,
)
from lorakit.config import TrainConfig


@pytest.mark.parametrize("out_f,in_f,r", [(12, 20, 6), (3, 20, 6), (12, 4, 6), (5, 5, 1)])
def test_singular_values_of_the_update_without_forming_it(out_f, in_f, r):
    torch.manual_seed(0)
    A, B = torch.randn(r, in_f), torch.randn(out_f, r)
    ours = update_singular_values(A, B, scaling=-0.5)
    direct = torch.linalg.svdvals(-0.5 * B.double() @ A.double())
    assert torch.allclose(ours, direct[: len(ours)], atol=1e-10)
    assert torch.all(direct[len(ours) :] < 1e-10)  # the rest is zero: rank <= r


def test_a_random_rank_3_update_has_effective_rank_3():
    torch.manual_seed(1)
    # r = 16 adapter whose update has rank 3: B = U V with U [24, 3], V [3, 16]
    B = torch.randn(24, 3) @ torch.randn(3, 16)
    A = torch.randn(16, 40)
    s = update_singular_values(A, B, scaling=2.0)
    assert len(s) == 16 and torch.all(s[3:] < 1e-6 * s[0])  # float32 factors
    assert effective_rank(s, 0.99) == 3
    assert effective_rank(s, 1 - 1e-9) == 3  # nothing beyond rank 3


def test_effective_rank_of_known_spectra():
    # s = 3, 2, 1: energy 9, 4, 1 of 14 → top-1 64%, top-2 92.9%, top-3 100%
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert [effective_rank(s, e) for e in (0.5, 0.9, 0.95, 0.99)] == [1, 2, 3, 3]
    # a flat (identity-like) spectrum needs ceil(e * n) directions
    flat = torch.ones(16)
    assert effective_rank(flat, 0.9) == 15 and effective_rank(flat, 0.99) == 16
    assert effective_rank(torch.ones(10), 0.9) == 9  # exactly 90%: no extra direction
    # one dominant direction
    assert effective_rank(torch.tensor([10.0, 0.1, 0.1]), 0.99) == 1
    assert effective_rank(torch.zeros(4), 0.9) == 0  # a layer that never moved


def test_recommendation_rounds_to_powers_of_two():
    assert [pow2_ceil(x) for x in (0, 1, 2, 3, 4, 4.5, 9, 64)] == [1, 1, 2, 4, 4, 8, 16, 64]
    ranks = {"a": 1, "b": 2, "c": 3, "d": 5}
    # 75th percentile of 1, 2, 3, 5 is 3.5 → r = 4; pattern: layers whose own rank differs
    assert recommend(ranks, max_rank=64, quantile=0.75) == (4, {"a": 1, "b": 2, "d": 8})
    assert recommend(ranks, max_rank=4, quantile=0.75) == (4, {"a": 1, "b": 2})
    assert recommend(ranks, max_rank=64, quantile=0.5, pattern=False) == (4, None)
    assert recommend({"a": 2, "b": 2}, max_rank=64) == (2, None)


def test_rank_probe_end_to_end(tmp_path, bert_dir, data_flags, capsys):
    out = tmp_path / "probe"
    args = [
        "rank-probe",
        *data_flags,
        "--max-steps",
        "12",
        "--lr",
        "1e-2",
        "--rank",
        "8",
        "--pattern",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    assert "recommended r=" in capsys.readouterr().out
    result = json.loads((out / "rank_probe.json").read_text())
    layers = result["layers"]
    assert len(layers) == 2 * 6 + 1  # q, k, v, attention out, intermediate, out; pooler
    for e in layers:
        s = torch.tensor(e["singular_values"])
        assert len(s) == 8 and torch.all(s[:-1] >= s[1:])
        assert 1 <= e["r90"] <= e["r99"] <= 8
    rec = result["recommendation"]
    assert rec["r"] in (1, 2, 4, 8) and rec["alpha"] == 2 * rec["r"]
    # the YAML is a train config as is: rank_pattern included
    values = yaml.safe_load((out / "recommendation.yaml").read_text())
    config = TrainConfig(**values)
    assert config.r == rec["r"] and config.rank_pattern == rec["rank_pattern"]
    assert config.model == str(bert_dir) and config.max_steps == 12
    # validated against the probe run, and the report says so with the same numbers
    val = result["validation"]
    assert val["probe_accuracy"] == result["probe"]["accuracy"]
    assert val["share_of_probe"] == pytest.approx(val["accuracy"] / val["probe_accuracy"])
    report = (out / "report.md").read_text()
    assert "## How the recommendation was validated" in report
    assert f"r={rec['r']} scored test accuracy {val['accuracy']:.4f} against" in report
    assert f"{val['probe_accuracy']:.4f} at r=8" in report
    assert (out / "spectra.png").stat().st_size > 0
    assert (out / f"validate-r{rec['r']}" / "metrics.json").is_file()
    # the same command again reuses both runs; another one is refused
    mtime = (out / "probe-r8" / "metrics.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "probe-r8" / "metrics.json").stat().st_mtime_ns == mtime
    assert main([*args, "--energy", "0.5"]) == 2
    assert "other settings (energy)" in capsys.readouterr().err


def _sweep(tmp_path, scores: dict[int, float], metric="accuracy", targets="all-linear"):
    summary = [
        {"method": "lora", "targets": targets, "r": r, metric: v, "group": f"lora-{targets}-r{r}"}
        for r, v in scores.items()
    ]
    summary.append({"method": "full", "targets": "", "r": None, metric: 0.99, "group": "full"})
    summary.append({"method": "lora", "targets": "attention", "r": 2, metric: 0.99, "group": "x"})
    sets = {"attention": ["query", "value"], "all-linear": "all-linear"}
    (tmp_path / "results.json").write_text(json.dumps({"target_sets": sets, "summary": summary}))
    return tmp_path


def test_recommendation_is_checked_against_a_sweep(tmp_path):
    from lorakit.compare.probe_check import check_against_sweep, check_sentence

    sweep = _sweep(tmp_path, {1: 0.60, 2: 0.70, 4: 0.745, 8: 0.75, 16: 0.74})
    agree = check_against_sweep(sweep, "all-linear", 4, "accuracy")
    # best 0.75 at r=8; 99% of it is 0.7425: r=4 (0.745) is the smallest rank that reaches it
    assert (agree["best_r"], agree["smallest_r_within_99"], agree["agrees"]) == (8, 4, True)
    assert abs(agree["share_of_best"] - 0.745 / 0.75) < 1e-12
    assert "agrees" in check_sentence(agree) and "r=4 scored accuracy 0.7450" in check_sentence(
        agree
    )
    low = check_against_sweep(sweep, "all-linear", 2, "accuracy")
    assert not low["agrees"] and "disagrees" in check_sentence(low)
    missing = check_against_sweep(sweep, "all-linear", 32, "accuracy")
    assert missing["score_at_r"] is None and "did not train r=32" in check_sentence(missing)
    # the other target set is matched by its module list; other sets' runs are not mixed in
    att = check_against_sweep(sweep, ["query", "value"], 2, "accuracy")
    assert att["scores"] == {"2": 0.99}


def test_perplexity_check_prefers_lower(tmp_path):
    from lorakit.compare.probe_check import check_against_sweep

    sweep = _sweep(tmp_path, {2: 12.0, 8: 10.0, 32: 10.05}, metric="perplexity")
    check = check_against_sweep(sweep, "all-linear", 32, "perplexity")
    assert check["best_r"] == 8 and check["agrees"] and check["smallest_r_within_99"] == 8


def test_against_errors_are_one_line(tmp_path):
    from lorakit.compare.probe_check import check_against_sweep
    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError, match="no results.json"):
        check_against_sweep(tmp_path, "all-linear", 4, "accuracy")
    sweep = _sweep(tmp_path, {4: 0.7})
    with pytest.raises(ConfigError, match="no LoRA target set"):
        check_against_sweep(sweep, ["q_proj"], 4, "accuracy")


def test_a_miss_within_sampling_noise_says_so(tmp_path):
    from lorakit.compare.probe_check import check_against_sweep, check_sentence

    sweep = _sweep(tmp_path, {4: 0.74, 8: 0.75})
    data = json.loads((sweep / "results.json").read_text())
    for e in data["summary"]:
        e["test_examples"] = 2000
    (sweep / "results.json").write_text(json.dumps(data))
    # se of 0.75 on 2,000 = 0.00968: 0.74 is 98.7% of 0.75 but only 1.03 se below it
    check = check_against_sweep(sweep, "all-linear", 4, "accuracy")
    assert not check["agrees"] and check["within_noise"]
    assert abs(check["standard_error"] - (0.75 * 0.25 / 2000) ** 0.5) < 1e-12
    assert "cannot tell them apart" in check_sentence(check)
