"""Bad input: one line `error: ...` naming the problem and the fix, exit 2, nothing written."""

import json

import pytest

from lorakit.cli import main


def _fails(capsys, args, match):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "—" in err[0], err
    assert match in err[0], err[0]
    return err[0]


@pytest.fixture
def base(bert_dir, sentiment_csv, tmp_path):
    return [
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
        str(tmp_path / "out"),
        "--max-steps",
        "2",
    ]


def _with(args, **kw):
    args = list(args)
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        args[args.index(flag) + 1] = str(v)
    return args


def test_missing_data_file(capsys, base, tmp_path):
    _fails(capsys, _with(base, data=tmp_path / "nope.csv"), "nope.csv")
    assert not (tmp_path / "out").exists()


def test_unknown_column(capsys, base, tmp_path):
    _fails(capsys, _with(base, text_column="body"), "body")
    assert not (tmp_path / "out" / "adapter").exists()


def test_empty_and_single_class_data(capsys, base, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("review,mood\n")
    _fails(capsys, _with(base, data=empty), "empty")
    single = tmp_path / "single.csv"
    single.write_text("review,mood\n" + "".join(f"text {i},pos\n" for i in range(20)))
    _fails(capsys, _with(base, data=single), "class")


def test_undecodable_text(capsys, base, tmp_path):
    bad = tmp_path / "latin.csv"
    bad.write_bytes(b"review,mood\n" + "caf\xe9 ok,pos\nbad caf\xe9,neg\n".encode("latin-1") * 10)
    _fails(capsys, _with(base, data=bad), "encoding")


def test_unknown_model_and_uncached_hub_id(capsys, base):
    _fails(capsys, _with(base, model="no-such-model"), "minilm")
    _fails(capsys, _with(base, model="someorg/some-model"), "someorg/some-model")


def test_existing_output_is_not_overwritten(capsys, base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails(capsys, base, "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_yaml_key_and_bad_yaml(capsys, base, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    _fails(capsys, ["train", str(cfg)], "learning_rate: unknown key")
    cfg.write_text("r: [1, \n")
    _fails(capsys, ["train", str(cfg)], "not valid YAML")
    _fails(capsys, ["train", str(tmp_path / "missing.yaml")], "not found")


def test_bad_values(capsys, base):
    _fails(capsys, [*base, "--r", "0"], "r:")
    _fails(capsys, _with(base, max_steps=0), "max_steps")


def test_resume_without_a_run(capsys, base):
    _fails(capsys, [*base, "--resume"], "nothing to resume")


def test_adapter_for_another_base(capsys, tmp_path, bert_dir, llama_model_dir):
    import lorakit
    from tiny_models import tiny_bert_cls

    # its intermediate layer is 48 wide, bert_dir's 64: the shapes say "another base" (the
    # head's 3 labels alone would not: a saved head's label count is read from the adapter)
    other = lorakit.inject(
        tiny_bert_cls(),
        lorakit.LoraConfig(
            target_modules=["query", "intermediate.dense"], modules_to_save=["classifier"]
        ),
    )
    path = lorakit.save_adapter(other, tmp_path / "other")
    _fails(
        capsys,
        ["classify", "hello", "--model", str(bert_dir), "--adapter", str(path)],
        "another base",
    )
    _fails(
        capsys,
        [
            "merge",
            "--model",
            str(bert_dir),
            "--adapter",
            str(path),
            "--output",
            str(tmp_path / "merged"),
        ],
        "another base",
    )
    assert not (tmp_path / "merged").exists()


def test_yaml_and_flags_merge(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("r: 4\nlr: 0.01\ntargets: q_proj,v_proj\n")
    assert main(["train", str(cfg), "--r", "16", "--print-config"]) == 0
    out = capsys.readouterr().out
    import yaml

    resolved = yaml.safe_load(out)
    assert (
        resolved["r"] == 16
        and resolved["lr"] == 0.01
        and resolved["targets"] == ["q_proj", "v_proj"]
    )
    assert json.dumps(resolved)  # plain data


def test_eval_unknown_split(capsys, bert_dir, sentiment_csv):
    _fails(
        capsys,
        ["eval", "--model", str(bert_dir), "--data", str(sentiment_csv), "--split", "dev"],
        "unknown split 'dev'",
    )
