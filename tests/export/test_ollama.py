"""--ollama: the Modelfile next to the exported GGUF files, its TEMPLATE measured from the
model's chat template. (Ollama itself is not installable here; what is checked is that the
measured pieces re-render the Jinja template on every conversation shape, and the file.)"""

from __future__ import annotations

import pytest

from export.llama_helpers import tiny_causal_lm
from lorakit.cli import main
from lorakit.export.gguf_arch import UnsupportedExportError
from lorakit.export.ollama import chat_turns, go_template
from lorakit.models.paths import alias_path

CONVERSATIONS = [
    [{"role": "user", "content": "I feel low today"}],
    [
        {"role": "system", "content": "You are a kind listener."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How are you?"},
        {"role": "user", "content": "tired {{ and }} sad"},
    ],
]


def test_smollm2_template_measured_per_role(smol_tokenizer):
    turns = chat_turns(smol_tokenizer)
    assert turns.wrap["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert turns.generation == "<|im_start|>assistant\n"
    assert "SmolLM" in turns.default_system  # printed when no system message comes first
    for messages in CONVERSATIONS:
        for gen in (False, True):
            want = smol_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen
            )
            assert turns.render(messages, gen) == want
    template = go_template(turns)
    assert template.count("{{ .Content }}") == 3 and "{{ range .Messages }}" in template


def test_template_that_depends_on_position_is_refused(smol_tokenizer):
    tok = smol_tokenizer.__class__.from_pretrained(smol_tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}{{ loop.index }}:{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(UnsupportedExportError, match="by hand"):
        chat_turns(tok)


def test_ollama_dir_for_an_adapter_on_the_packaged_base(capsys, tmp_path, smol_tokenizer):
    import lorakit
    from lorakit.infer.load import load_for_inference

    model, _, _, _ = load_for_inference("smollm2-135m")
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    adapter = lorakit.save_adapter(model, tmp_path / "mood")
    (adapter / "lorakit_train_config.json").write_text('{"model": "smollm2-135m"}')
    out = tmp_path / "ollama"
    assert (
        main(["export", "--format", "gguf-lora", "--adapter", str(adapter), "--ollama", str(out)])
        == 0
    )
    lines = (out / "Modelfile").read_text().splitlines()
    assert f"FROM {alias_path('smollm2-135m').resolve()}" in lines  # the base, read in place
    assert f"ADAPTER {(out / 'adapter.gguf').resolve()}" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert any(line.startswith('TEMPLATE """') for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "adapter.gguf"]
    # again: refused, unless --overwrite (both files are lorakit's)
    args = ["export", "--format", "gguf-lora", "--adapter", str(adapter), "--ollama", str(out)]
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0


def test_ollama_dir_for_a_model_not_read_from_gguf(tmp_path, smol_tokenizer):
    model = tiny_causal_lm("qwen2", len(smol_tokenizer))
    model.save_pretrained(tmp_path / "m")
    smol_tokenizer.save_pretrained(tmp_path / "m")
    out = tmp_path / "ollama"
    assert main(["export", "--model", str(tmp_path / "m"), "--ollama", str(out)]) == 0
    lines = (out / "Modelfile").read_text().splitlines()
    assert f"FROM {(out / 'model.gguf').resolve()}" in lines
    assert not any(line.startswith("ADAPTER") for line in lines)
