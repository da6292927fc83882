"""Adapter directories from untrusted sources: every malformed field, regex, tensor or file is a
one-line AdapterFormatError naming the file and the field, refused quickly, before any model is
touched; read_adapter needs no model; attach_adapter is all-or-nothing."""

import importlib
import json
import os
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.adapters import ReadAdapter, attach_adapter, confined_file, read_adapter
from lorakit.adapters.validate import MAX_MATCH_COST, check_pattern
from lorakit.infer.load import adapter_task
from lorakit.lora import lora_layers
from lorakit.lora.registry import active_adapters
from tiny_models import randomize_adapters, tiny_bert_cls, tiny_llama

load_module = importlib.import_module("lorakit.adapters.load")
inject_module = importlib.import_module("lorakit.lora.inject")  # lorakit.lora.inject: a function
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.fixture
def saved(tmp_path):
    model = randomize_adapters(
        lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    )
    return lorakit.save_adapter(model, tmp_path / "adapter")


def _edit_config(path, **fields):
    raw = json.loads((path / CONFIG).read_text())
    raw.update(fields)
    (path / CONFIG).write_text(json.dumps(raw))


def _edit_tensors(path, edit):
    tensors = load_file(path / WEIGHTS)
    edit(tensors)
    save_file(tensors, path / WEIGHTS)


def _refused(path, *words, read=read_adapter):
    """read (without a model) must raise exactly AdapterFormatError, on one line, naming `words`."""
    start = time.perf_counter()
    with pytest.raises(lorakit.AdapterFormatError) as info:
        read(path)
    assert time.perf_counter() - start < 2, "refusal took too long"
    message = str(info.value)
    assert info.type is lorakit.AdapterFormatError, message
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


HOSTILE = [
    ("target_modules", ["q_proj", 1]),
    ("target_modules", {"q_proj": 1}),
    ("target_modules", "(a+)+$"),
    ("target_modules", "(x|x)*"),
    ("target_modules", "(a*)*b"),
    ("target_modules", ".*.*.*.*.*q_proj"),
    ("target_modules", "("),
    ("target_modules", "q" * 300),
    ("exclude_modules", 7),
    ("exclude_modules", r"(\w+\.)+v_proj"),
    ("modules_to_save", 5),
    ("modules_to_save", "lm_head"),
    ("modules_to_save", [""]),
    ("task_type", [1]),
    ("task_type", "NOT_A_TASK"),
    ("peft_type", 5),
    ("r", "8"),
    ("r", True),
    ("r", 2.5),
    ("r", -4),
    ("lora_alpha", None),
    ("lora_alpha", "16"),
    ("lora_alpha", float("nan")),
    ("lora_alpha", float("inf")),
    ("lora_dropout", "0.1"),
    ("lora_dropout", 1.5),
    ("bias", 3),
    ("bias", "some"),
    ("use_dora", "yes"),
    ("use_rslora", 1),
    ("fan_in_fan_out", "no"),
    ("init_lora_weights", 3),
    ("base_model_name_or_path", 7),
    ("base_model_name_or_path", "evil\nsecond line"),
    ("rank_pattern", {"(": 4}),
    ("rank_pattern", {"(a+)+$": 4}),
    ("rank_pattern", {"(a|a)*": 4}),
    ("rank_pattern", {"(ab|ab)*q": 4}),
    ("rank_pattern", {r"(a)\1": 4}),
    ("rank_pattern", {".*.*.*q_proj": 4}),
    ("rank_pattern", {"q" * 300: 4}),
    ("rank_pattern", {"q_proj": "4"}),
    ("rank_pattern", {"q_proj": 0}),
    ("rank_pattern", {"q_proj": True}),
    ("rank_pattern", [4]),
    ("alpha_pattern", {"q_proj": None}),
    ("alpha_pattern", {"(a+)+$": 3}),
    ("alpha_pattern", {"q_proj": float("nan")}),
    ("alpha_pattern", "q_proj"),
]


@pytest.mark.parametrize("field,value", HOSTILE, ids=[f"{f}={v!r}"[:40] for f, v in HOSTILE])
def test_hostile_config_field_is_refused_naming_file_and_field(saved, field, value):
    _edit_config(saved, **{field: value})
    _refused(saved, CONFIG, field)
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(lorakit.AdapterFormatError, match=field):
        lorakit.load_adapter(model, saved)
    assert lorakit.list_adapters(model) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lora_config_refuses_uncompilable_pattern_keys():
    for field in ("rank_pattern", "alpha_pattern"):
        with pytest.raises(lorakit.ConfigError, match=f"{field}: key '\\(' is not a valid"):
            lorakit.LoraConfig(**{field: {"(": 4}})


def test_regex_refusals_state_the_rule(saved):
    _edit_config(saved, rank_pattern={"(a+)+$": 4})
    message = _refused(saved, "nested quantifier", "no timeout", "(x+)+")
    assert "(a+)+$" in message
    _edit_config(saved, rank_pattern={}, target_modules="." * 257)
    _refused(saved, "257 characters", "at most 256")


def test_rank_and_alpha_patterns_are_bounded_together(saved):
    one = r".*a.*b"  # allowed alone (two open-ended repetitions after the dotted prefix)
    _edit_config(saved, rank_pattern={one: 4})
    read_adapter(saved)
    _edit_config(saved, rank_pattern={one: 4}, alpha_pattern={r".*c.*d": 8})
    _refused(saved, "rank_pattern and alpha_pattern keys together")


@pytest.mark.parametrize(
    "pattern,wrapped",
    [
        ("q_proj", True),
        (r".*\.(q_proj|v_proj)", False),
        (r"^(?!.*vision).*\.(q|k|v)_proj$", False),
        (r".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$", False),  # peft's T5 example
        (r"model\.layers\.\d+\.self_attn\.(q|v)_proj", True),
        (r"layers\.1\.self_attn\.q_proj", True),
        (r"(.*\.)?q_proj", True),
        (r"[(+]+x", False),
        (r"(ab)+", False),
    ],
)
def test_ordinary_patterns_pass(pattern, wrapped):
    assert 1 <= check_pattern(pattern, "f: field", wrapped) <= MAX_MATCH_COST


def test_worst_allowed_pattern_matches_quickly_on_a_hostile_name(saved):
    """The bound is real: the costliest allowed rank_pattern key against the costliest allowed
    module name (256 characters, a dot at every other one) is matched in well under a second."""
    module = ".".join(["a"] * 128)[:255]
    A, B = f"base_model.model.{module}.lora_A.weight", f"base_model.model.{module}.lora_B.weight"
    _edit_tensors(saved, lambda t: t.update({A: torch.zeros(4, 8), B: torch.zeros(8, 4)}))
    for key in (r".*a.*b", r"\d+\d+x", r".*a.*a"):
        _edit_config(saved, rank_pattern={key: 4})
        start = time.perf_counter()
        read_adapter(saved)
        assert time.perf_counter() - start < 1, key


def test_tensor_keys_must_name_module_paths(saved):
    bad = "base_model.model.model.layers.0.self_attn.q proj.lora_A.weight"
    _edit_tensors(saved, lambda t: t.update({bad: torch.zeros(4, 32)}))
    _refused(saved, WEIGHTS, "q proj", "module path")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_key(saved, value):
    def poison(tensors):
        tensors[Q_A][1, 2] = value

    _edit_tensors(saved, poison)
    _refused(saved, WEIGHTS, Q_A, "NaN or infinite")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool])
def test_non_float_lora_tensors_are_refused(saved, dtype):
    _edit_tensors(saved, lambda t: t.update({Q_A: t[Q_A].to(dtype)}))
    _refused(saved, WEIGHTS, Q_A, str(dtype))


def test_half_precision_weights_are_fine(saved):
    _edit_tensors(saved, lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))
    assert read_adapter(saved).ranks


def test_rank_checked_without_a_model(saved):
    B = Q_A.replace("lora_A", "lora_B")
    _edit_tensors(saved, lambda t: t.update({B: torch.zeros(32, 3)}))
    _refused(saved, WEIGHTS, "q_proj", "A [4, 32] and B [32, 3]")
    _edit_tensors(saved, lambda t: t.update({B: torch.zeros(32, 4)}))
    _edit_config(saved, rank_pattern={"q_proj": 2})
    _refused(saved, "tensors have rank 4", "r=2")


def test_bias_tensors_need_a_bias_mode(saved):
    key = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"
    _edit_tensors(saved, lambda t: t.update({key: torch.zeros(32)}))
    _refused(saved, WEIGHTS, key, "bias='none'")


def test_read_adapter_needs_no_model_and_attaches_to_many(saved):
    read = read_adapter(saved)
    assert isinstance(read, ReadAdapter)
    assert (read.bias, read.task_type, read.config.r) == ("none", "CAUSAL_LM", 4)
    assert read.raw["r"] == 4 and Q_A in read.tensors
    first, second = tiny_llama(), tiny_llama()
    assert attach_adapter(first, read) == "default"
    assert attach_adapter(second, read, "x", trainable=True) == "x"
    assert attach_adapter(first, read) == "adapter"  # "default" taken: the directory's name
    assert lorakit.list_adapters(first) == ["default", "adapter"]
    assert all(p.requires_grad for n, p in second.named_parameters() if ".adapters.x." in n)


# -- labels.json ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ["{not json", "{}", '"neg"', "[1, 2]", '["neg", null]', '["a", "a"]', "[]"]
)
def test_corrupt_labels_are_refused(saved, content):
    (saved / "labels.json").write_text(content)
    _refused(saved, "labels.json", read=adapter_task)


def test_good_labels_are_read(saved):
    assert adapter_task(saved) == ("causal-lm", None)
    (saved / "labels.json").write_text('["neg", "pos"]')
    assert adapter_task(saved) == ("causal-lm", ["neg", "pos"])


# -- files confined to the directory ---------------------------------------------------------


@pytest.mark.parametrize("name", [CONFIG, WEIGHTS, "labels.json"])
def test_symlink_out_of_the_directory_is_refused_when_confined(saved, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    if name == "labels.json":
        outside.write_text('["neg", "pos"]')
    else:
        os.replace(saved / name, outside)
    (saved / name).symlink_to(outside)
    read_adapter(saved)  # not confined: followed, as before
    adapter_task(saved)
    read = adapter_task if name == "labels.json" else read_adapter
    _refused(saved, name, "outside the adapter directory", read=lambda p: read(p, confine=True))
    if name == CONFIG:
        _refused(saved, name, read=lambda p: adapter_task(p, confine=True))


def test_pickle_symlink_out_is_refused_when_confined(saved, tmp_path):
    torch.save(load_file(saved / WEIGHTS), tmp_path / "evil.bin")
    (saved / WEIGHTS).unlink()
    (saved / "adapter_model.bin").symlink_to(tmp_path / "evil.bin")
    assert read_adapter(saved, allow_pickle=True).ranks
    _refused(
        saved,
        "adapter_model.bin",
        "outside",
        read=lambda p: read_adapter(p, allow_pickle=True, confine=True),
    )


def test_confined_reads_links_inside_and_a_linked_directory(saved, tmp_path):
    os.replace(saved / CONFIG, saved / "real.json")
    (saved / CONFIG).symlink_to("real.json")
    (tmp_path / "link").symlink_to(saved)
    assert read_adapter(tmp_path / "link", confine=True).ranks
    assert confined_file(saved, "missing.json") is None


def test_confined_refuses_dangling_links_and_non_files(saved, tmp_path):
    (saved / "labels.json").symlink_to(tmp_path / "nowhere")
    _refused(saved, "labels.json", read=lambda p: adapter_task(p, confine=True))
    (saved / "labels.json").unlink()
    (saved / "labels.json").mkdir()
    _refused(
        saved, "labels.json", "not a regular file", read=lambda p: adapter_task(p, confine=True)
    )


# -- attach is all-or-nothing ----------------------------------------------------------------


def _state(model):
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {n: p.requires_grad for n, p in model.named_parameters()},
        "modules": dict(model.named_modules()),
        "adapters": lorakit.list_adapters(model),
        "active": active_adapters(model),
        "layer_active": {n: list(m.active) for n, m in model.named_modules() if hasattr(m, "rows")},
    }


def _assert_same(model, before):
    after = _state(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    assert all(torch.equal(before["tensors"][k], v) for k, v in after["tensors"].items())
    assert after["modules"].keys() == before["modules"].keys()
    assert all(after["modules"][n] is m for n, m in before["modules"].items())
    for key in ("grads", "adapters", "active", "layer_active"):
        assert after[key] == before[key], key


def _failing(monkeypatch, target, name, calls_before_failure=0):
    """Patch `target.name` to run the real function, then raise (after some calls)."""
    real, count = getattr(target, name), [0]

    def fail(*args, **kwargs):
        count[0] += 1
        if count[0] > calls_before_failure:
            raise RuntimeError("late failure")
        return real(*args, **kwargs)

    def run_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("late failure")

    monkeypatch.setattr(target, name, fail if calls_before_failure else run_then_fail)


def test_failed_copy_leaves_a_fresh_model_as_it_was(saved, monkeypatch):
    model = tiny_llama()
    before = _state(model)
    _failing(monkeypatch, load_module, "_copy_in")
    with pytest.raises(RuntimeError, match="late failure"):
        lorakit.load_adapter(model, saved)
    _assert_same(model, before)
    assert lora_layers(model) == {}
    monkeypatch.undo()
    assert lorakit.load_adapter(model, saved) == "default"


@pytest.mark.parametrize(
    "target,name,calls",
    [
        ("load", "_copy_in", 0),  # biases and half the layers already copied
        ("load", "set_adapter", 0),  # the very last step
        ("load", "inject", 0),  # after injecting
        ("inject", "init_adapter", 1),  # in the middle of injecting: one layer wrapped
    ],
)
def test_failed_load_on_a_model_with_adapters_changes_nothing(
    tmp_path, monkeypatch, target, name, calls
):
    other = randomize_adapters(
        lorakit.inject(
            tiny_bert_cls(),
            lorakit.LoraConfig(
                r=2, target_modules=["query", "value"], modules_to_save=["classifier"], bias="all"
            ),
        )
    )
    path = lorakit.save_adapter(other, tmp_path / "biased")
    model = tiny_bert_cls()
    lorakit.inject(
        model,
        lorakit.LoraConfig(r=4, target_modules=["query", "key"], modules_to_save=["classifier"]),
        "first",
    )
    randomize_adapters(model)
    model.bert.encoder.layer[0].attention.self.query.active = ["first"]
    before = _state(model)
    _failing(monkeypatch, {"load": load_module, "inject": inject_module}[target], name, calls)
    with pytest.raises(RuntimeError, match="late failure"):
        lorakit.load_adapter(model, path)
    _assert_same(model, before)
    monkeypatch.undo()
    assert lorakit.load_adapter(model, path) == "default"
    assert lorakit.list_adapters(model) == ["first", "default"]
