import pytest
import torch

from lorakit.errors import ConfigError, ModelNotFoundError
from lorakit.models.load import load_model, resolve_model
from lorakit.models.paths import alias_path

LABELS = ["negative", "neutral", "positive"]


def test_resolve_aliases_dirs_and_gguf_files(llama_dir, tmp_path):
    minilm = resolve_model("minilm")
    assert (minilm.kind, minilm.path, minilm.is_gguf) == ("alias", alias_path("minilm"), False)
    smol = resolve_model("smollm2-135m")
    assert smol.kind == "alias" and smol.is_gguf
    assert resolve_model(llama_dir).kind == "dir"
    gguf = tmp_path / "x" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert (resolve_model(gguf).kind, resolve_model(gguf).is_gguf) == ("gguf", True)
    only = resolve_model(gguf.parent)  # a directory holding one .gguf means that file
    assert (only.kind, only.path) == ("dir", gguf)


@pytest.mark.parametrize(
    "name", ["./missing-dir", "/nowhere/model.gguf", "some-org/not-cached-model"]
)
def test_unknown_names_list_the_alternatives(name):
    with pytest.raises(ModelNotFoundError, match="a .gguf file.*an alias: minilm, smollm2-135m"):
        resolve_model(name)


def test_directory_without_config_and_non_gguf_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"has no config.json \(found: weights.bin\)"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        resolve_model(tmp_path / "weights.bin")


def test_hub_id_from_the_local_cache(llama_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    import shutil

    shutil.copytree(llama_dir, snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_model("tiny-org/tiny-llama")
    assert (source.kind, source.path) == ("hub", snapshot)
    model, _ = load_model("tiny-org/tiny-llama", "causal-lm")
    assert model.config.vocab_size == 259


def test_causal_lm_tokenizer_gets_pad_and_left_padding(llama_dir):
    model, tokenizer = load_model(llama_dir, "causal-lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :2].tolist() == [258, 258]
    assert model(**batch).logits.shape == (2, 4, 259)


def test_classification_gets_a_new_seeded_head(llama_dir):
    model, tokenizer = load_model(llama_dir, "classification", label_names=LABELS, seed=0)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.score.weight.shape == (3, 32)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert model.config.pad_token_id == tokenizer.pad_token_id == 258
    assert tokenizer.padding_side == "right"
    again, _ = load_model(llama_dir, "classification", label_names=LABELS, seed=0)
    other, _ = load_model(llama_dir, "classification", label_names=LABELS, seed=1)
    assert torch.equal(model.score.weight, again.score.weight)
    assert not torch.equal(model.score.weight, other.score.weight)
    state = torch.get_rng_state()
    load_model(llama_dir, "classification", num_labels=2, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched


def test_minilm_classifier_and_kept_head(tmp_path):
    model, tokenizer = load_model("minilm", "classification", label_names=LABELS, seed=0)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.weight.shape == (3, 384)
    assert tokenizer.pad_token == "[PAD]" and tokenizer.padding_side == "right"
    model.save_pretrained(tmp_path / "trained")
    tokenizer.save_pretrained(tmp_path / "trained")
    kept, _ = load_model(tmp_path / "trained", "classification", label_names=LABELS, seed=9)
    assert torch.equal(kept.classifier.weight, model.classifier.weight)  # a merged model reloads
    own, _ = load_model(tmp_path / "trained", "classification")
    assert own.config.id2label[2] == "positive"
    bigger, _ = load_model(tmp_path / "trained", "classification", num_labels=5)
    assert bigger.classifier.weight.shape == (5, 384)


def test_wrong_task_and_bad_labels(llama_dir):
    with pytest.raises(
        ConfigError, match="minilm has no trained causal-lm model — use task classification"
    ):
        load_model("minilm", "causal-lm")
    with pytest.raises(ConfigError, match="unknown task 'regression'"):
        load_model(llama_dir, "regression")
    with pytest.raises(ConfigError, match="at least two distinct names"):
        load_model(llama_dir, "classification", label_names=["a", "a"])
    with pytest.raises(ConfigError, match="num_labels=2 but 3 label_names"):
        load_model(llama_dir, "classification", num_labels=2, label_names=LABELS)


def test_pickle_weights_are_refused(llama_dir):
    model, _ = load_model(llama_dir, "causal-lm")
    (llama_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), llama_dir / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match="safetensors only"):
        load_model(llama_dir, "causal-lm")


def test_directory_without_tokenizer(llama_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (llama_dir / name).unlink(missing_ok=True)
    with pytest.raises(
        ModelNotFoundError, match="no usable tokenizer in .* tokenizer.save_pretrained"
    ):
        load_model(llama_dir, "causal-lm")
