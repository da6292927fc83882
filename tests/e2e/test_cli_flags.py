"""The options of train, compare, rank-probe and serve come from their config's fields: every
field has its flag (spellings kept as they were), given flags override the YAML file, and a
field added to a config appears on the command line with no second declaration."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from lorakit.cli import main
from lorakit.compare.config import CompareConfig, RankProbeConfig
from lorakit.config import TrainConfig
from lorakit.serve.config import ServeConfig

# Flags whose spelling is not the field's name; they must stay as users know them.
RENAMED = {
    "include_full": "--full",
    "include_head": "--head",
    "validate_run": "--validate",
    "adapters": "--adapter",
    "classifier_adapters": "--classifier-adapter",
    "adapter_dirs": "--adapter-dir",
}
# Fields no single flag can carry: YAML only.
YAML_ONLY = {"target_sets", "train"}
COMMANDS = [
    ("train", TrainConfig),
    ("compare", CompareConfig),
    ("rank-probe", RankProbeConfig),
    ("serve", ServeConfig),
]


def _help(capsys, monkeypatch, command: str) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: no wrapping, no truncation
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


@pytest.mark.parametrize("command, cls", COMMANDS)
def test_every_config_field_has_a_flag(capsys, monkeypatch, command, cls):
    text = _help(capsys, monkeypatch, command)
    shown = _flags(text)
    expected = {
        name: RENAMED.get(name, "--" + name.replace("_", "-"))
        for name in cls.model_fields
        if name not in YAML_ONLY
    }
    missing = {name: flag for name, flag in expected.items() if flag not in shown}
    assert not missing, f"fields without their flag in `lorakit {command} --help`: {missing}"
    assert "--print-config" in shown and "[config_file]" in text
    for name, field in cls.model_fields.items():  # help from the description, once
        if name not in YAML_ONLY and field.description:
            first_words = " ".join(field.description.split()[:3])
            line = next(x for x in text.splitlines() if re.match(rf"│ {expected[name]}\s", x))
            assert first_words in line, (name, line)


def test_existing_spellings_and_yaml_only_fields(capsys, monkeypatch):
    train = _flags(_help(capsys, monkeypatch, "train"))
    assert {"--packing", "--no-packing", "--release-memory", "--keep-memory", "--resume"} <= train
    assert "--no-resume" not in train and "--no-overwrite" not in train
    compare = _flags(_help(capsys, monkeypatch, "compare"))
    assert {"--full", "--no-full", "--head", "--no-head", "--isolate", "--in-process"} <= compare
    assert "--target-sets" not in compare and "--train" not in compare
    probe = _flags(_help(capsys, monkeypatch, "rank-probe"))
    assert {"--validate", "--no-validate", "--pattern", "--no-pattern"} <= probe


def test_flags_given_override_yaml_and_the_rest_stay(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("r: 4\npacking: true\nrelease_memory: true\ninit: kaiming\nseed: 7\n")
    args = ["train", str(cfg), "--r", "16", "--no-packing", "--rank-pattern", "q_proj=2"]
    assert main([*args, "--init", "pissa", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["r"] == 16 and resolved["packing"] is False and resolved["init"] == "pissa"
    assert resolved["rank_pattern"] == {"q_proj": 2}
    assert resolved["release_memory"] is True and resolved["seed"] == 7  # not given: from YAML
    assert resolved["max_steps"] is None and resolved["batch_size"] == 16  # defaults


def test_choices_are_checked_on_the_command_line(capsys):
    assert main(["train", "--method", "lorax", "--print-config"]) == 2
    assert "lorax" in capsys.readouterr().err


def test_compare_and_serve_flags(capsys, tmp_path):
    assert main(["compare", "--ranks", "4,1", "--no-full", "--in-process", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["ranks"] == [1, 4] and resolved["include_full"] is False
    assert resolved["isolate"] is False and resolved["include_head"] is None
    cfg = tmp_path / "s.yaml"
    cfg.write_text("adapters: {old: /a}\nport: 9000\n")
    args = ["serve", str(cfg), "--adapter", "mood=/x", "--adapter", "tone=/y"]
    assert main([*args, "--adapter-dir", "/d", "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["adapters"] == {"mood": "/x", "tone": "/y"} and resolved["port"] == 9000
    assert resolved["adapter_dirs"] == ["/d"] and resolved["classifier_adapters"] == {}
    assert main(["serve", "--adapter", "mood", "--print-config"]) == 2
    assert "--adapter takes NAME=DIR" in capsys.readouterr().err


def test_a_new_field_needs_no_second_declaration():
    code = """
import sys
from typing import Literal
from pydantic import Field
import lorakit.config

class Later(lorakit.config.TrainConfig):
    new_knob: int = Field(3, description="A knob added later.")
    new_mode: Literal["a", "b"] = Field("a", description="A mode added later.")
    new_switch: bool = Field(False, description="A switch added later.")

lorakit.config.TrainConfig = Later
from lorakit.cli import main
sys.exit(main(sys.argv[1:]))
"""
    run = [sys.executable, "-c", code, "train"]
    env = {**os.environ, "COLUMNS": "400"}
    out = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    knob = next(line for line in out.stdout.splitlines() if "--new-knob" in line)
    assert "A knob added later." in knob and "3" in knob
    assert "--new-switch" in out.stdout and "--no-new-switch" in out.stdout
    args = ["--new-knob", "5", "--new-mode", "b", "--new-switch", "--print-config"]
    out = subprocess.run([*run, *args], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["new_knob"] == 5 and resolved["new_mode"] == "b" and resolved["new_switch"]
