"""`lorakit demo --quick` on the real packaged defaults (MiniLM, SmolLM2, tweets)."""

import pytest

from lorakit.demo import run_demo


@pytest.mark.slow
def test_quick_demo_on_the_real_defaults(tmp_path, smollm2, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(smollm2["root"]))  # reuse this session's conversion
    lines: list[str] = []
    result = run_demo(str(tmp_path / "demo"), quick=True, say=lines.append)
    text = "\n".join(lines)
    assert "trainable params: " in text and "|| trainable%: " in text
    assert "majority class" in text and "before LoRA" in text and "after LoRA" in text
    assert "exact match on" in text and "smollm2> " in text
    sentiment, instruct = result["sentiment"], result["instruct"]
    assert sentiment["test"]["examples"] == 24 and instruct["test"]["examples"] == 24
    assert 0 <= instruct["test_before"]["exact_match"] <= 1
    assert len(result["chat_reply"].split()) >= 3  # SmolLM2 answers in words
    assert (tmp_path / "demo/minilm-sentiment/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "demo/smollm2-sentiment/adapter/adapter_model.safetensors").is_file()
    with pytest.raises(Exception, match="overwrite"):
        run_demo(str(tmp_path / "demo"), quick=True, say=lines.append)
