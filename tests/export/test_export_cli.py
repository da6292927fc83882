"""`lorakit export` from the command line: what each format refuses (one line, exit 2,
nothing written), what --overwrite may replace, the peft copy vLLM reads, and the merge of
a peft classifier whose head has 3 labels."""

from __future__ import annotations

import json
import os

import gguf
import numpy as np
import pytest
import torch

import lorakit
from export.llama_helpers import SAMPLE, tiny_causal_lm, torch_logits
from lorakit.cli import main


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fails(capsys, args, match):
    capsys.readouterr()  # what the set-up printed (transformers' progress bars)
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert match in err[0], err[0]
    return err[0]


@pytest.fixture
def llama_dir(tmp_path, smol_tokenizer):
    model = tiny_causal_lm("llama", len(smol_tokenizer))
    directory = tmp_path / "tiny-llama"
    model.save_pretrained(directory)
    smol_tokenizer.save_pretrained(directory)
    return directory


def _adapter(model_dir, path, **lora):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    config = dict(r=4, alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    lorakit.inject(model, lorakit.LoraConfig(**{**config, **lora}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.3)
    lorakit.save_adapter(model, path)
    return model, path


def test_dora_is_refused_for_gguf_lora_and_merged_with_merge(capsys, tmp_path, llama_dir):
    _, adapter = _adapter(llama_dir, tmp_path / "dora", use_dora=True)
    out = tmp_path / "a.gguf"
    args = ["export", "--format", "gguf-lora", "--adapter", str(adapter)]
    args += ["--model", str(llama_dir), "--output", str(out)]
    _fails(capsys, args, "DoRA")
    assert not out.exists()
    assert main([*args, "--merge"]) == 0
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["general.type"].contents() == "model"  # the merged model, not an adapter


def test_what_gguf_cannot_run_is_refused(capsys, tmp_path, bert_dir):
    cls = lorakit.inject(
        __import__("tiny_models").tiny_bert_cls(),
        lorakit.LoraConfig(target_modules=["query"], modules_to_save=["classifier"]),
    )
    adapter = lorakit.save_adapter(cls, tmp_path / "cls")
    out = tmp_path / "x.gguf"
    cls_args = ["export", "--adapter", str(adapter), "--output", str(out)]
    _fails(capsys, cls_args, "does not name its base model")
    _fails(capsys, [*cls_args, "--model", str(bert_dir)], "causal LMs")
    _fails(capsys, ["export", "--model", str(bert_dir), "--output", str(out)], "'bert'")
    _fails(capsys, ["export", "--format", "peft", "--output", str(out)], "needs --adapter")
    assert not out.exists()


def test_overwrite_replaces_only_a_gguf_lorakit_wrote(capsys, tmp_path, llama_dir):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"my own notes")
    args = ["export", "--model", str(llama_dir), "--output", str(out)]
    _fails(capsys, args, "already exists")
    _fails(capsys, [*args, "--overwrite"], "not a GGUF file lorakit exported")
    assert out.read_bytes() == b"my own notes"
    out.unlink()
    assert main(args) == 0
    _fails(capsys, args, "already exists")
    assert main([*args, "--overwrite", "--dtype", "q8_0"]) == 0
    assert gguf.GGUFReader(str(out)).fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # readable by a runtime's own user


def test_peft_copy_folds_patterns_and_loads_in_peft(capsys, tmp_path, llama_dir, smol_tokenizer):
    import peft
    from transformers import AutoModelForCausalLM

    patterns = {"rank_pattern": {"v_proj": 10}, "alpha_pattern": {"q_proj": 3.0}}
    model, adapter = _adapter(llama_dir, tmp_path / "ad", **patterns)
    ids = smol_tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    want = torch_logits(model, ids)
    out = tmp_path / "for-vllm"
    args = ["export", "--format", "peft", "--adapter", str(adapter)]
    assert main([*args, "--model", str(llama_dir), "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # a directory vLLM's user can read
    assert "--max-lora-rank 16" in said and "--enable-lora" in said  # r 10 -> vLLM's 16
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(llama_dir)
    assert sorted(p.name for p in out.iterdir()) == [
        ".lorakit-run",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    base = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    pmodel = peft.PeftModel.from_pretrained(base, out).eval()
    assert np.allclose(torch_logits(pmodel, ids), want, atol=1e-4)
    # every module at vLLM's one scaling (alpha / r of the config), B carrying the rest
    lora_layers = [m for m in pmodel.modules() if isinstance(getattr(m, "scaling", None), dict)]
    scalings = {m.scaling["default"] for m in lora_layers}
    assert scalings == {config["lora_alpha"] / config["r"]}


def test_peft_copy_refuses_what_vllm_cannot_serve(capsys, tmp_path, llama_dir):
    _, adapter = _adapter(llama_dir, tmp_path / "dora", use_dora=True)
    args = ["export", "--format", "peft", "--adapter", str(adapter), "--output"]
    _fails(
        capsys, [*args, str(tmp_path / "o"), "--model", str(llama_dir)], "vLLM cannot serve DoRA"
    )
    assert not (tmp_path / "o").exists()


def test_merge_reads_a_peft_classifier_head_of_three_labels(tmp_path, bert_dir):
    import peft
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        bert_dir, num_labels=3, ignore_mismatched_sizes=True
    )
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query"], task_type="SEQ_CLS")
    pmodel = peft.get_peft_model(base, config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in pmodel.named_parameters():
            if "lora_B" in name or "classifier" in name:
                p.normal_(0, 0.5)
    pmodel.save_pretrained(tmp_path / "peft-cls")
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    want = pmodel.eval()(input_ids=ids).logits
    for fmt in ("merge", "export"):
        out = tmp_path / f"merged-{fmt}"
        args = ["--model", str(bert_dir), "--adapter", str(tmp_path / "peft-cls")]
        args = [fmt, *args, "--output", str(out)]
        assert main(args if fmt == "merge" else [*args, "--format", "transformers"]) == 0
        merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert merged.config.num_labels == 3
        assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-5)
