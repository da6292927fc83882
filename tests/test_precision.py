"""--precision: what auto picks from the machine's measured bf16 speed, and what each name
means for a run (stored dtype, autocast for full fine-tuning)."""

import re

import pytest
import torch

from lorakit.errors import ConfigError
from lorakit.precision import (
    MIN_SPEEDUP,
    auto_precision,
    cpu_bf16_flags,
    decide,
    probe_bf16_speedup,
    resolve_precision,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "square, skinny, want",
    [
        (12.8, 4.0, "bf16"),  # an AMX CPU
        (3.2, 1.3, "bf16"),  # AVX512-BF16
        (1.9, 1.5, "fp32"),  # not enough ahead on big matmuls
        (3.0, 0.8, "fp32"),  # decode-shaped matmuls slower: serving would lose
        (0.003, 0.02, "fp32"),  # no bf16 instructions: a scalar fallback
    ],
)
def test_auto_takes_bf16_only_when_the_probe_shows_it_well_ahead(square, skinny, want):
    name, reason = decide(square, skinny, {"avx512_bf16"})
    assert name == want
    assert f"{square:.1f}x" in reason and "avx512_bf16" in reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    )
    assert cpu_bf16_flags(info) == {"avx512_bf16", "amx_bf16"}
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_bf16_flags(info) == set()
    assert cpu_bf16_flags(tmp_path / "absent") is None


def test_auto_on_this_machine_follows_its_flags_and_its_measured_speed():
    name, reason = auto_precision(CPU)
    flags = cpu_bf16_flags()
    if flags == set() and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # no bf16 engine: fp32, decided from the flags without timing anything
        assert (name, "instructions" in reason) == ("fp32", True)
        return
    measured = re.search(r"bf16 matmul ([\d.]+)x fp32 \(decode shape ([\d.]+)x", reason)
    assert measured, reason
    square, skinny = map(float, measured.groups())
    assert name == ("bf16" if square >= MIN_SPEEDUP and skinny >= 1.0 else "fp32")


def test_the_probe_measures_real_ratios():
    square, skinny = probe_bf16_speedup(size=128, rows=8, reps=2)
    assert square > 0 and skinny > 0 and square < 1e4


def test_each_name_resolves_to_a_storage_dtype_and_full_fine_tuning_to_autocast():
    bf16 = resolve_precision("bf16", CPU)
    assert (bf16.dtype, bf16.compute_dtype, bf16.autocast) == (torch.bfloat16,) * 2 + (False,)
    assert resolve_precision("fp32", CPU).dtype == torch.float32
    assert resolve_precision("fp16", CPU).dtype == torch.float16
    full = resolve_precision("bf16", CPU, train_all=True)
    # every weight trains: fp32 masters, bf16 matmuls under autocast
    assert (full.dtype, full.compute_dtype, full.autocast) == (torch.float32, torch.bfloat16, True)
    auto_full = resolve_precision("auto", CPU, train_all=True)
    assert (auto_full.name, auto_full.autocast) == ("fp32", False)  # autocast on CPU: slower
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_precision("int4", CPU)


@pytest.mark.parametrize("row, want", [(0.56, "fp32"), (1.4, "bf16")])
def test_one_sequence_at_a_time_keeps_fp32_where_the_bf16_row_matmul_is_slower(
    monkeypatch, row, want
):
    # the probe's readings forced (as on an AMX Xeon: bf16 far ahead on batches, its GEMV
    # 0.56x fp32); the rule that turns them into a choice is what runs
    import lorakit.precision as precision

    monkeypatch.setattr(precision, "auto_precision", lambda device: ("bf16", "measured fast"))
    monkeypatch.setattr(precision, "_cpu_row_ratio", lambda threads: row)
    single = resolve_precision("auto", CPU, single_row=True)
    assert single.name == want
    if want == "fp32":
        assert f"{row:.2f}x" in single.reason and "one sequence at a time" in single.reason
    assert resolve_precision("auto", CPU).name == "bf16"  # batched work: the batch probe
    assert resolve_precision("bf16", CPU, single_row=True).name == "bf16"  # asked for


def test_serving_on_a_cpu_stays_fp32_under_auto(monkeypatch):
    # bf16 measured far ahead (forced, as on an AMX Xeon): batched training and eval take it,
    # the server does not (a request's tokens would depend on its batch-mates), unless asked
    import lorakit.precision as precision

    monkeypatch.setattr(precision, "auto_precision", lambda device: ("bf16", "measured fast"))
    served = resolve_precision("auto", CPU, serving=True)
    assert served.name == "fp32" and "solo run" in served.reason
    assert "measured fast" in served.reason  # what batched work would have taken, and why
    assert resolve_precision("auto", CPU).name == "bf16"
    assert resolve_precision("bf16", CPU, serving=True).name == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), serving=True).name == "bf16"


def test_the_row_probe_measures_a_real_ratio():
    from lorakit.precision import _ratio

    assert 0 < _ratio(1, 64, 64, 3) < 1e4
