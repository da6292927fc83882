"""`lorakit train` end to end on decoder families other than Llama: Gemma 3 (a scaled token
embedding, a tied head, q/k norms, sliding windows) and Qwen2 (q/k/v biases). The adapter it
writes loads in peft on the same base with the logits lorakit's own loader gives."""

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

import lorakit
from lorakit.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _write(family: str, path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiny_models import tiny_gemma3
    from tiny_tokenizer import VOCAB, make_tokenizer

    if family == "gemma3":
        model = tiny_gemma3(vocab_size=VOCAB)
    else:
        torch.manual_seed(0)
        dims = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2)
        config = Qwen2Config(vocab_size=VOCAB, num_attention_heads=4, num_key_value_heads=2, **dims)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("gemma3", ["--targets", "q_proj,v_proj,embed_tokens"]),
        ("gemma3", ["--quantize", "int8", "--activation-checkpointing"]),
        ("qwen2", ["--targets", "all-linear", "--method", "dora"]),
    ],
)
def test_train_and_load_in_peft(tmp_path, qa_jsonl, family, extra):
    model_dir = _write(family, tmp_path / family)
    out = tmp_path / "run"
    args = ["train", "--model", str(model_dir), "--task", "causal-lm", "--data", str(qa_jsonl)]
    args += ["--output", str(out), "--max-steps", "4", "--batch-size", "4", "--lr", "1e-2"]
    args += ["--max-length", "200", "--max-eval-samples", "2", "--device", "cpu", *extra]
    assert main(args) == 0
    adapter = out / "adapter"
    ids = torch.randint(3, 250, (2, 11), generator=torch.Generator().manual_seed(0))

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids).logits

    base = logits(AutoModelForCausalLM.from_pretrained(model_dir))
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    lorakit.load_adapter(ours, adapter)
    theirs = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), adapter
    )
    expected = logits(ours)
    assert (expected - base).abs().max() > 1e-4  # training moved the model
    assert (logits(theirs) - expected).abs().max() <= 1e-5
