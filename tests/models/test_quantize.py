"""A quantized frozen base (int8 / NF4): error bounds, memory, training, saving, merging."""

import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lorakit
from lorakit.cli import main
from lorakit.errors import ConfigError
from lorakit.eval.evaluate import evaluate
from lorakit.lora import LoraLayer, lora_layers
from lorakit.lora.merge import merge_layer
from lorakit.models.quant_codec import (
    NF4_CODE,
    dequantize_int8,
    dequantize_nf4,
    quantize_int8,
    quantize_nf4,
)
from lorakit.models.quant_layers import Int8Embedding, Int8Linear, NF4Linear
from lorakit.models.quantize import dequantize, quantize, quantized_modules, tensor_bytes
from tiny_models import logits, randomize_adapters, rel_error, tiny_bert_cls, tiny_llama


def _round_trip(W: torch.Tensor) -> tuple[float, float]:
    int8 = dequantize_int8(*quantize_int8(W))
    nf4 = dequantize_nf4(*quantize_nf4(W), W.shape)
    return rel_error(int8, W), rel_error(nf4, W)


# -- the math --------------------------------------------------------------------------------
def test_round_trip_error_on_gaussian_weights():
    # Theory for N(0, 1) rows: int8's error is uniform in ±s/2 with s = absmax/127, absmax
    # ≈ 3σ for 200 columns, so ≈ 3/127/√12 = 0.0068 relative; NF4 with absmax blocks of 64
    # measures 0.091-0.092 (QLoRA's code book; a uniform 4-bit grid does worse, below).
    for seed in range(3):
        torch.manual_seed(seed)
        W = torch.randn(300, 200)  # 60,000 weights: the last NF4 block is padded
        int8, nf4 = _round_trip(W)
        assert int8 < 0.0075 and 0.085 < nf4 < 0.095, (int8, nf4)
        q, scale = quantize_int8(W)
        err = (dequantize_int8(q, scale) - W).abs()
        assert (err <= scale[:, None] / 2 + 1e-6).all()  # rounding to the nearest step
        # NF4 beats a uniform symmetric 4-bit grid (15 levels, same blocks of 64) on normal
        # weights: measured 0.092 vs 0.107
        blocks = W.view(-1)[: 64 * 900].view(-1, 64)
        step = blocks.abs().amax(1, keepdim=True) / 7
        uniform = rel_error(torch.round(blocks / step) * step, blocks)
        assert nf4 < 0.9 * uniform


def test_nf4_codes_and_layout():
    absmax = torch.tensor([2.0, 0.5])
    code = torch.tensor(NF4_CODE)
    W = torch.cat([code.repeat(4) * absmax[0], code.flip(0).repeat(4) * absmax[1]]).view(2, 64)
    packed, stored = quantize_nf4(W)
    assert packed.dtype == torch.uint8 and packed.shape == (64,) and torch.equal(stored, absmax)
    assert torch.equal(dequantize_nf4(packed, stored, W.shape), W)  # code values are exact
    assert packed[0] == (0 << 4 | 1)  # weight 0 in the high nibble, weight 1 in the low one
    zero = torch.zeros(3, 5)  # all-zero blocks and padding: zeros, no NaN
    assert torch.equal(dequantize_nf4(*quantize_nf4(zero), zero.shape), zero)
    assert torch.equal(dequantize_int8(*quantize_int8(zero)), zero)


def test_round_trip_error_on_real_weights():
    # MiniLM's 37 trained Linear layers (heavier tails than a Gaussian): measured int8 mean
    # 0.0091 / worst 0.0212 (one outlier row sets a coarse step), NF4 mean 0.0938 / worst 0.0983.
    model, _ = lorakit.models.load_model("minilm", "classification", num_labels=2)
    errors = [
        _round_trip(m.weight.detach())
        for name, m in model.named_modules()
        if type(m) is nn.Linear and "classifier" not in name
    ]
    int8, nf4 = zip(*errors, strict=True)
    assert len(errors) == 37
    assert max(int8) < 0.025 and sum(int8) / len(int8) < 0.010
    assert max(nf4) < 0.10 and sum(nf4) / len(nf4) < 0.095


# -- quantized models ----------------------------------------------------------------------
@pytest.mark.parametrize("mode,bound", [("int8", 0.02), ("nf4", 0.12)])
@pytest.mark.parametrize("tie", [False, True])
def test_quantized_logits_close_to_fp32(mode, bound, tie, ids):
    # measured on this model: int8 0.0074-0.0085, nf4 0.058-0.067 relative
    model = tiny_llama(tie=tie)
    expected = logits(model, ids)
    lorakit.inject(model, lorakit.LoraConfig(r=4))
    quantize(model, mode)
    assert rel_error(logits(model, ids), expected) < bound
    layers = lora_layers(model)
    assert len(layers) == 14 and all(is_q(layer.base_layer) for layer in layers.values())
    assert isinstance(model.model.embed_tokens, Int8Embedding)
    assert isinstance(model.lm_head, Int8Linear)  # the head is int8 in both modes
    body = NF4Linear if mode == "nf4" else Int8Linear
    assert type(layers["model.layers.0.mlp.down_proj"].base_layer) is body
    if tie:  # one copy of the codes, read by both
        assert "qweight" not in dict(model.lm_head.named_buffers())
        assert model.lm_head.codes is model.model.embed_tokens.qweight


def is_q(module):
    return isinstance(module, Int8Linear | NF4Linear | Int8Embedding)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_gradients_equal_those_of_the_dequantized_fp_model(mode, ids):
    """The backward that re-dequantizes gives the gradients of the same model in fp32."""
    quantized = randomize_adapters(lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=4)))
    quantize(quantized, mode)
    reference = randomize_adapters(lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=4)))
    quantize(reference, mode)
    dequantize(reference)
    assert not quantized_modules(reference)
    grads = []
    for model in (quantized, reference):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 28
    for name, g in grads[0].items():
        # int8 scales the output, not W: the same math in another rounding order
        assert torch.allclose(g, grads[1][name], rtol=1e-3, atol=1e-5), name


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_large_weights_are_dequantized_a_block_of_rows_at_a_time(mode, monkeypatch):
    """A weight above CHUNK elements (an LM head) is multiplied a block of output rows at a
    time: the same products as the whole weight, without ever building it whole."""
    from lorakit.models import quant_layers

    g = torch.Generator().manual_seed(0)
    W, bias = torch.randn(40, 128, generator=g), torch.randn(40, generator=g)
    x, grad = torch.randn(3, 5, 128, generator=g), torch.randn(3, 5, 40, generator=g)
    if mode == "int8":
        layer = Int8Linear(*quantize_int8(W), nn.Parameter(bias, requires_grad=False))
    else:
        layer = NF4Linear(*quantize_nf4(W), 128, 40, nn.Parameter(bias, requires_grad=False))
    full = layer.dequantized()
    y, gx = layer.matmul(x), layer.matmul_grad(grad)
    assert torch.allclose(y, x @ full.T, atol=1e-4) and torch.allclose(gx, grad @ full, atol=1e-4)

    monkeypatch.setattr(quant_layers, "CHUNK", 128 * 6)  # 6 rows per block: 7 blocks
    blocks = layer.row_blocks()
    assert len(blocks) == 7 and torch.equal(torch.cat([layer.rows(b) for b in blocks]), full)

    def whole(*args):
        raise AssertionError("the whole weight was dequantized")

    monkeypatch.setattr(type(layer), "dequantized", whole)
    assert torch.allclose(layer.matmul(x), y, atol=1e-5)
    assert torch.allclose(layer.matmul_grad(grad), gx, atol=1e-5)
    x.requires_grad_(True)  # the autograd path (_FrozenMatmul) and the bias
    layer(x).backward(grad)
    assert torch.allclose(x.grad, gx, atol=1e-5)


def test_nf4_rows_that_are_not_whole_blocks_stay_one_piece(monkeypatch):
    from lorakit.models import quant_layers

    monkeypatch.setattr(quant_layers, "CHUNK", 96 * 4)
    W = torch.randn(20, 96)  # a row is 1.5 NF4 blocks: rows cannot start on a block
    layer = NF4Linear(*quantize_nf4(W), 96, 20)
    assert layer.row_blocks() == [slice(None)]
    x = torch.randn(7, 96)
    assert torch.allclose(layer.matmul(x), x @ layer.dequantized().T, atol=1e-5)


def test_quantized_bytes_and_fp32_weights_freed(llama_model_dir):
    from transformers import AutoModelForCausalLM

    for mode, ratio in [("int8", 0.30), ("nf4", 0.17)]:
        # from disk: safetensors memory-maps the file, as for a real training run
        model = AutoModelForCausalLM.from_pretrained(llama_model_dir)
        lorakit.inject(model, lorakit.LoraConfig(r=4))
        fp32 = {n: m.weight.numel() * 4 for n, m in model.named_modules() if type(m) is nn.Linear}
        old = weakref.ref(model.model.layers[0].self_attn.q_proj.base_layer.weight)
        before = tensor_bytes(model)
        quantize(model, mode)
        gc.collect()
        assert old() is None  # the fp32 weight is gone, not just unreferenced by the model
        for name, module in quantized_modules(model).items():
            if isinstance(module, NF4Linear | Int8Linear) and name != "lm_head":
                assert tensor_bytes(module) <= ratio * fp32[name], name
        # nothing left pointing into the memory-mapped checkpoint (that would keep it resident)
        tensors = list(model.parameters()) + list(model.buffers())
        assert all(t.untyped_storage().resizable() for t in tensors)
        # the whole tiny model, fp32 LoRA (r=4 on 32 features) and norms included
        assert tensor_bytes(model) < (0.40 if mode == "int8" else 0.30) * before


def test_classifier_head_and_trainable_parts_stay_full_precision():
    model = tiny_bert_cls()
    lorakit.inject(model, lorakit.LoraConfig(r=4, modules_to_save=["classifier"]))
    trainable = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    quantize(model, "nf4")
    assert type(model.classifier.original_module) is nn.Linear
    assert {n: p for n, p in model.named_parameters() if p.requires_grad}.keys() == trainable.keys()
    assert isinstance(model.bert.embeddings.word_embeddings, Int8Embedding)
    assert type(model.bert.embeddings.LayerNorm) is nn.LayerNorm


def test_bias_stays_the_trainable_parameter():
    model = tiny_bert_cls()
    lorakit.inject(model, lorakit.LoraConfig(r=4, bias="lora_only", target_modules=["query"]))
    bias = model.bert.encoder.layer[0].attention.self.query.base_layer.bias
    quantize(model, "int8")
    layer = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer.base_layer, Int8Linear) and layer.base_layer.bias is bias
    assert bias.requires_grad and bias.dtype == torch.float32


def test_dora_on_a_quantized_base_trains_and_pissa_quantizes_its_residual(ids):
    model = tiny_llama()
    expected = logits(model, ids)
    lorakit.inject(model, lorakit.LoraConfig(r=4, use_dora=True))
    quantize(model, "int8")
    # m was measured on the fp32 W; on W_q it rescales rows by |W|/|W_q| ≈ 1 ± 1e-4
    assert rel_error(logits(model, ids), expected) < 0.02
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.adapters["default"].magnitude.grad.abs().sum() > 0

    pissa = tiny_llama()
    lorakit.inject(pissa, lorakit.LoraConfig(r=4, init="pissa"))
    quantize(pissa, "nf4")  # QPiSSA: the residual is what gets quantized
    assert rel_error(logits(pissa, ids), expected) < 0.12
    with pytest.raises(ConfigError, match="PiSSA.*quantized — .*dequantize"):
        lorakit.delete_adapter(pissa, "default")
    qlora_order = tiny_llama()
    with pytest.raises(ConfigError, match="nothing to quantize: .* — inject LoRA first"):
        quantize(qlora_order, "int8")  # a fresh model trains every weight
    for p in qlora_order.parameters():
        p.requires_grad_(False)
    quantize(qlora_order, "int8")
    with pytest.raises(ConfigError, match="PiSSA.*int8-quantized — inject with init='pissa'"):
        lorakit.inject(qlora_order, lorakit.LoraConfig(r=4, init="pissa"))


def test_inject_and_load_adapter_onto_an_already_quantized_model(tmp_path, ids):
    """The QLoRA order (quantize, then inject) works too: quantized modules are adaptable."""
    trained = randomize_adapters(lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=4)))
    lorakit.save_adapter(trained, tmp_path / "ad")
    base = tiny_llama()
    for p in base.parameters():
        p.requires_grad_(False)
    quantize(base, "int8")
    lorakit.load_adapter(base, tmp_path / "ad")
    expected = logits(quantize(trained, "int8"), ids)
    assert torch.allclose(logits(base, ids), expected, atol=1e-5)


def test_merge_into_a_quantized_base_is_refused_and_dequantize_then_merge_works(ids):
    model = randomize_adapters(lorakit.inject(tiny_llama(tie=True), lorakit.LoraConfig(r=4)))
    quantize(model, "nf4")
    expected = logits(model, ids)
    for merge in (lorakit.merge, lorakit.merge_and_unload):
        with pytest.raises(ConfigError, match="quantized.* — call .*dequantize\\(model\\)") as exc:
            merge(model)
        assert "\n" not in str(exc.value)
    layer = model.model.layers[0].self_attn.q_proj
    with pytest.raises(ConfigError, match="nf4-quantized"):
        merge_layer(layer, "default")
    assert not any(layer.merged for layer in lora_layers(model).values())  # nothing changed
    assert torch.equal(logits(model, ids), expected)
    dequantize(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again
    assert torch.allclose(logits(model, ids), expected, atol=1e-5)
    plain = lorakit.merge_and_unload(model)
    assert not any(isinstance(m, LoraLayer) or is_q(m) for m in plain.modules())
    assert torch.allclose(logits(plain, ids), expected, atol=1e-5)


def test_quantize_refuses_bad_input():
    with pytest.raises(ConfigError, match="unknown quantization 'int4' — use one of: int8, nf4"):
        quantize(tiny_llama(), "int4")
    model = randomize_adapters(lorakit.inject(tiny_llama(), lorakit.LoraConfig(r=4)))
    lorakit.merge(model)
    with pytest.raises(ConfigError, match="merged .*unmerge"):
        quantize(model, "int8")


# -- through the CLI -------------------------------------------------------------------------
def _train(args, out) -> int:
    return main(["train", *args, "--output", str(out)])


@pytest.fixture(scope="module")
def lm_args(llama_model_dir, qa_jsonl):
    return [
        "--model",
        str(llama_model_dir),
        "--task",
        "causal-lm",
        "--data",
        str(qa_jsonl),
        "--max-steps",
        "25",
        "--batch-size",
        "8",
        "--lr",
        "3e-2",
        "--max-length",
        "200",
        "--max-eval-samples",
        "8",
        # fp32, which the checks against library calls below compute in (auto takes bf16 on
        # a CPU with a bf16 matrix engine)
        "--precision",
        "fp32",
    ]


@pytest.fixture(scope="module")
def quantized_runs(tmp_path_factory, lm_args):
    root = tmp_path_factory.mktemp("qruns")
    for mode in ("int8", "nf4"):
        assert _train([*lm_args, "--quantize", mode], root / mode) == 0
    return root


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_train_cli_on_a_quantized_base(quantized_runs, mode, llama_model_dir, ids):
    out = quantized_runs / mode
    losses = [float(r.split(",")[2]) for r in (out / "train_log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 25 and sum(losses[-5:]) < 0.85 * sum(losses[:5])
    assert json.loads((out / "config.json").read_text())["quantize"] == mode
    # a plain peft adapter: nothing in it says "quantized"
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "quant" not in json.dumps(config)
    keys = load_file(adapter / "adapter_model.safetensors").keys()
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys)
    assert json.loads((adapter / "lorakit_train_config.json").read_text())["quantize"] == mode
    # it loads on the unquantized base and computes what training computed, up to quantization
    from transformers import AutoModelForCausalLM

    fp = AutoModelForCausalLM.from_pretrained(llama_model_dir).eval()
    lorakit.load_adapter(fp, adapter)
    assert not quantized_modules(fp)
    trained = AutoModelForCausalLM.from_pretrained(llama_model_dir).eval()
    for p in trained.parameters():
        p.requires_grad_(False)
    lorakit.load_adapter(trained, adapter)
    quantize(trained, mode)
    assert rel_error(logits(fp, ids), logits(trained, ids)) < (0.02 if mode == "int8" else 0.12)


def test_peft_reads_an_adapter_trained_on_a_quantized_base(quantized_runs, llama_model_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = quantized_runs / "nf4" / "adapter"
    ours = AutoModelForCausalLM.from_pretrained(llama_model_dir).eval()
    lorakit.load_adapter(ours, adapter)
    theirs = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(llama_model_dir), adapter
    )
    assert torch.allclose(logits(theirs.eval(), ids), logits(ours, ids), atol=1e-5)


def test_generate_cli_with_the_adapter_on_the_unquantized_base(quantized_runs, llama_model_dir):
    args = ["generate", "Shout good #1", "--model", str(llama_model_dir), "--max-tokens", "4"]
    assert main([*args, "--adapter", str(quantized_runs / "int8" / "adapter")]) == 0


def test_generate_and_eval_cli_on_an_int8_base(quantized_runs, llama_model_dir, qa_jsonl, capsys):
    # --quantize on the inference commands: the base as the int8 run trained on it, so
    # eval reproduces the run's own test loss (the plain base gives another)
    adapter, model = str(quantized_runs / "int8" / "adapter"), str(llama_model_dir)
    args = ["generate", "Shout good #1", "--model", model, "--max-tokens", "4"]
    assert main([*args, "--adapter", adapter, "--quantize", "int8"]) == 0
    assert "base: int8-quantized (--quantize)" in capsys.readouterr().err
    data = dict(data=str(qa_jsonl), max_length=200, max_eval_samples=8, precision="fp32")
    losses = {}
    for mode in ("int8", "none"):
        result = evaluate(model=model, adapter=adapter, **data, quantize=mode)
        assert result["quantize"] == mode
        losses[mode] = result["metrics"]["perplexity"]
    trained = json.loads((quantized_runs / "int8" / "metrics.json").read_text())["test"][
        "perplexity"
    ]
    assert losses["int8"] == pytest.approx(trained, rel=1e-4)
    assert abs(losses["none"] - trained) > 1e-3
    args = ["eval", "--model", model, "--adapter", adapter, "--data", str(qa_jsonl)]
    assert (
        main([*args, "--max-eval-samples", "4", "--quantize", "int8", "--precision", "fp32"]) == 0
    )
    assert "4 examples, fp32, int8 base)" in capsys.readouterr().out


def test_merge_cli_dequantize(quantized_runs, llama_model_dir, tmp_path, ids, capsys):
    from transformers import AutoModelForCausalLM

    adapter = quantized_runs / "nf4" / "adapter"
    base = ["merge", "--adapter", str(adapter), "--model", str(llama_model_dir), "--output"]
    assert main([*base, str(tmp_path / "fp")]) == 0
    assert main([*base, str(tmp_path / "dq"), "--dequantize"]) == 0
    trained = AutoModelForCausalLM.from_pretrained(llama_model_dir).eval()
    for p in trained.parameters():
        p.requires_grad_(False)
    lorakit.load_adapter(trained, adapter)
    quantize(trained, "nf4")  # the model as it was trained
    full = AutoModelForCausalLM.from_pretrained(llama_model_dir).eval()
    lorakit.load_adapter(full, adapter)  # the adapter on the full-precision base
    dq = AutoModelForCausalLM.from_pretrained(tmp_path / "dq").eval()
    fp = AutoModelForCausalLM.from_pretrained(tmp_path / "fp").eval()
    assert torch.allclose(logits(dq, ids), logits(trained, ids), atol=1e-4)
    assert torch.allclose(logits(fp, ids), logits(full, ids), atol=1e-4)
    assert not torch.allclose(logits(dq, ids), logits(fp, ids), atol=1e-2)
    # an adapter trained without --quantize has nothing to dequantize
    capsys.readouterr()
    plain_run = quantized_runs / "nf4" / "plain"
    plain_run.mkdir()
    (plain_run / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    code = main([*base[:2], str(plain_run), *base[3:], str(tmp_path / "x"), "--dequantize"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not trained on a quantized base" in err[0], err


def test_quantize_with_full_or_head_is_a_one_line_error(lm_args, tmp_path, capsys):
    for method in ("full", "head"):
        code = _train([*lm_args, "--quantize", "int8", "--method", method], tmp_path / method)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert "quantize=int8 needs method lora or dora" in err[0] and "—" in err[0]
        assert not (tmp_path / method).exists()
    assert _train([*lm_args, "--quantize", "int4"], tmp_path / "bad") == 2
    assert "quantize" in capsys.readouterr().err


def test_resume_of_a_run_from_before_the_quantize_field(tmp_path):
    from lorakit.config import TrainConfig
    from lorakit.train.output_dir import check_output

    config = TrainConfig(output=str(tmp_path / "run"), resume=True)
    (tmp_path / "run").mkdir()
    saved = config.model_dump(mode="json")
    del saved["quantize"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    check_output(config)  # the old run ran unquantized: same config
    with pytest.raises(ConfigError, match="quantize"):
        check_output(config.model_copy(update={"quantize": "int8"}))


# -- the real default model ----------------------------------------------------------------
@pytest.mark.slow
def test_real_smollm2_quantized_logits(smollm2, monkeypatch):
    """Measured on the 38-token probe: int8 logits 0.043 relative error, top-1 agreement 36/38,
    0.265x the bytes; nf4 0.53 and 19/38, 0.179x. NF4 is lossy on a 135M model whose weights
    already went through GGUF's Q4_1 (block 32: 0.33 / 26/38); the adapter trains on top."""
    monkeypatch.setenv("LORAKIT_CACHE", str(smollm2["root"]))
    ids = smollm2["ids"]
    for mode, bound, agree in [("int8", 0.06, 0.9), ("nf4", 0.7, 0.4)]:
        model, _ = lorakit.models.load_model("smollm2-135m", "causal-lm")
        lorakit.inject(model, lorakit.LoraConfig(r=8))
        before = tensor_bytes(model)
        quantize(model, mode)
        with torch.no_grad():
            out = model(input_ids=ids).logits
        rel = rel_error(out, smollm2["logits"])
        same_top1 = (out.argmax(-1) == smollm2["logits"].argmax(-1)).float().mean().item()
        ratio = tensor_bytes(model) / before
        print(f"\n{mode}: logits rel err {rel:.4f}, top-1 agreement {same_top1:.3f}, {ratio:.3f}x")
        assert rel < bound and same_top1 >= agree
        assert ratio < (0.28 if mode == "int8" else 0.19)  # LoRA r=8 in fp32 included


def test_a_trained_copy_of_a_quantized_module_is_refused():
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"]))
    quantize(model, "int8")
    config = lorakit.LoraConfig(r=4, target_modules=["v_proj"], modules_to_save=["lm_head"])
    with pytest.raises(ConfigError, match="int8-quantized module"):
        lorakit.inject(model, config, adapter="second")
