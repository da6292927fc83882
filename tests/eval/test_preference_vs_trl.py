"""lorakit's DPO and ORPO losses, rewards and LoRA gradients against TRL's own code, on a tiny
random Llama and a fixed batch: equal within 1e-5 in fp32.

TRL's trainers are built around the very model lorakit trains (its LoRA layers, its
weights), and their loss methods are called on it: DPOTrainer.compute_loss with a separate
reference model (TRL's `ref_model` path), ORPOTrainer.get_batch_loss_metrics. lorakit's side
is the training path itself (train.preference.PairTraining: collated pairs, the reference
as the same model with its adapter off or a frozen copy, the cached reference log-probs).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer  # a test-only dependency, like peft: missing = failing
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from lorakit.adapters import load_adapter, save_adapter
from lorakit.config import LoraConfig, TrainConfig
from lorakit.data import encode_preference
from lorakit.data.preference import PreferenceExample
from lorakit.eval.preference_loss import pair_metrics
from lorakit.lora import inject
from lorakit.train.method import start_from_adapter
from lorakit.train.preference import PairTraining
from tiny_tokenizer import make_tokenizer, tiny_llama

ATOL = 1e-5
PAIRS = [
    PreferenceExample("What is the mood of 'I love it'?", "positive", "negative, sadly"),
    PreferenceExample("Name a colour.", "Blue, like the sky.", "No."),
    PreferenceExample("2 + 2?", "4", "It is 5, I think"),
]


@pytest.fixture(scope="module")
def tokenizer():
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token  # what lorakit's load_tokenizer sets
    return tok


def _perturbed(model, adapter: str = "default", seed: int = 1):
    """B = 0 at init makes the adapter the identity; random A and B give the policy its own
    log-probs and every LoRA parameter a gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".adapters.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _lora_model():
    return _perturbed(inject(tiny_llama(), LoraConfig(r=4, alpha=8)))


def _pairs(tokenizer, examples=PAIRS, chat=True):
    return encode_preference(examples, tokenizer, max_length=256, use_chat_template=chat)


def _training(objective: str, pairs, pad_id, **fields) -> PairTraining:
    config = TrainConfig(task="causal-lm", objective=objective, batch_size=len(pairs), **fields)
    return PairTraining(config, {"train": pairs}, pad_id)


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _ours(training: PairTraining, model) -> tuple[torch.Tensor, dict, dict]:
    """The loss a training step takes on the whole batch (DPO: the reference log-probs
    computed in it, the adapter off or the frozen copy alone), its statistics and gradients."""
    batch = training.make(list(range(len(training.pairs["train"]))))
    loss, sums = training.loss(model, batch, training.terms(batch), parts=1)
    loss.backward()
    return loss.detach(), pair_metrics(sums), _grads(model)


def _trl_dpo_inputs(batch: dict) -> dict:
    # TRL's collated DPO batch: [chosen; rejected] rows, completion_mask on the response
    assert torch.equal(batch["labels"] != -100, (batch["labels"] == batch["input_ids"]))
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != -100).long(),
    }


def _dpo_trainer(model, ref_model, tokenizer, tmp_path, **args):
    config = DPOConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, **args
    )
    dummy = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=dummy,
        processing_class=tokenizer,
    )


def _assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys() and ours
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], rtol=0, atol=ATOL, msg=name)
    # not vacuous: every LoRA parameter (and only they) got a non-zero gradient
    assert all(".adapters.default." in n for n in ours)
    assert all(g.abs().max() > 1e-4 for g in ours.values())


def _trl_metric(trainer, name: str) -> float:
    return trainer._metrics["eval"][name][-1]  # the model is in eval mode: no dropout


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_loss_rewards_and_gradients_match_trl(tokenizer, tmp_path, label_smoothing):
    model = _lora_model()
    pairs = _pairs(tokenizer)
    training = _training(
        "dpo", pairs, tokenizer.pad_token_id, beta=0.3, label_smoothing=label_smoothing
    )
    loss, metrics, grads = _ours(training, model)
    # TRL's reference model: the base weights alone, i.e. lorakit's model with the adapter off
    trainer = _dpo_trainer(
        model,
        tiny_llama(),
        tokenizer,
        tmp_path,
        beta=0.3,
        loss_type=["sigmoid" if not label_smoothing else "aot"],
        label_smoothing=label_smoothing,
    )
    inputs = _trl_dpo_inputs(training.make(list(range(len(pairs)))))
    if not label_smoothing:
        trl_loss = trainer.compute_loss(model, inputs)
        trl_loss.backward()
    else:
        # TRL 1.x keeps label smoothing out of its sigmoid loss (there it feeds robust DPO
        # and EXO); cDPO's formula, -(1-s) log sig(b d) - s log sig(-b d), is its "aot" loss,
        # which sorts the batch's margins first: on one pair that is cDPO itself. So TRL
        # scores each pair alone and the mean over pairs is the batch loss.
        n = len(pairs)
        trl_loss = 0.0
        for i in range(n):
            one = {k: v[[i, n + i]] for k, v in inputs.items()}
            part = trainer.compute_loss(model, one) / n
            part.backward()
            trl_loss += part.detach()
    _assert_same(grads, _grads(model))
    torch.testing.assert_close(loss, trl_loss.detach(), rtol=0, atol=ATOL)
    assert 0.05 < loss < 5  # a real loss, not 0 or log 2 (policy = reference)
    if not label_smoothing:
        names = {
            "reward_accuracy": "rewards/accuracies",
            "reward_margin": "rewards/margins",
            "chosen_reward": "rewards/chosen",
            "rejected_reward": "rewards/rejected",
            "chosen_logps": "logps/chosen",
            "rejected_logps": "logps/rejected",
        }
        for ours_name, trl_name in names.items():
            assert metrics[ours_name] == pytest.approx(_trl_metric(trainer, trl_name), abs=ATOL)
        assert metrics["reward_margin"] != 0


def test_dpo_from_an_sft_adapter_uses_its_frozen_copy_as_reference(tokenizer, tmp_path):
    # an "SFT adapter" on disk, as a previous run leaves it
    sft = _perturbed(inject(tiny_llama(), LoraConfig(r=4, alpha=8)), seed=2)
    save_adapter(sft, tmp_path / "sft")
    config = TrainConfig(task="causal-lm", objective="dpo", init_adapter=str(tmp_path / "sft"))
    model = tiny_llama()
    start_from_adapter(model, config)  # trainable "default" + frozen "reference"
    _perturbed(model, "default", seed=3)  # the policy moved away from the SFT adapter
    pairs = _pairs(tokenizer)
    training = PairTraining(config.model_copy(update={"batch_size": 3}), {"train": pairs}, 258)
    assert training.reference == "reference"
    loss, _, grads = _ours(training, model)
    reference = tiny_llama()  # TRL: the SFT model, a model of its own
    load_adapter(reference, tmp_path / "sft")
    trainer = _dpo_trainer(model, reference, tokenizer, tmp_path, beta=0.1)
    trl_loss = trainer.compute_loss(model, _trl_dpo_inputs(training.make([0, 1, 2])))
    trl_loss.backward()
    _assert_same(grads, _grads(model))
    torch.testing.assert_close(loss, trl_loss.detach(), rtol=0, atol=ATOL)
    # the base with adapters off is another reference: it would give another loss
    off = _training("dpo", pairs, 258)
    assert abs(_ours(off, model)[0] - loss) > 1e-3


def _orpo_trainer(model, tokenizer, tmp_path, lam):
    config = ORPOConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, beta=lam
    )
    dummy = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    return ORPOTrainer(model=model, args=config, train_dataset=dummy, processing_class=tokenizer)


def _trl_orpo_batch(batch: dict) -> dict:
    n = len(batch["input_ids"]) // 2
    out = {}
    for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, None))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = batch["labels"][rows]
    return out


def test_orpo_loss_rewards_and_gradients_match_trl(tokenizer, tmp_path):
    # TRL's ORPO puts its NLL on every token of prompt + chosen (as the ORPO authors' code);
    # lorakit's on the chosen response only (its SFT loss). With a prompt of no tokens the two
    # coincide, so TRL's whole get_batch_loss_metrics is the reference here; the test below
    # covers masked prompts.
    examples = [PreferenceExample("", p.chosen, p.rejected) for p in PAIRS]
    pairs = _pairs(tokenizer, examples, chat=False)
    model = _lora_model()
    training = _training("orpo", pairs, tokenizer.pad_token_id, orpo_lambda=0.5)
    loss, metrics, grads = _ours(training, model)
    trainer = _orpo_trainer(model, tokenizer, tmp_path, 0.5)
    batch = _trl_orpo_batch(training.make([0, 1, 2]))
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
    trl_loss.backward()
    _assert_same(grads, _grads(model))
    torch.testing.assert_close(loss, trl_loss.detach(), rtol=0, atol=ATOL)
    for name in ("accuracies", "margins", "chosen", "rejected"):
        ours_name = {"accuracies": "reward_accuracy", "margins": "reward_margin"}.get(
            name, f"{name}_reward"
        )
        assert metrics[ours_name] == pytest.approx(trl_metrics[f"rewards/{name}"], abs=ATOL)
    for side in ("chosen", "rejected"):
        assert metrics[f"{side}_logps"] == pytest.approx(trl_metrics[f"logps/{side}"], abs=ATOL)


def test_orpo_with_masked_prompts_is_response_nll_plus_trls_odds_ratio(tokenizer, tmp_path):
    pairs = _pairs(tokenizer)  # chat template: system + user turns masked
    model = _lora_model()
    training = _training("orpo", pairs, tokenizer.pad_token_id, orpo_lambda=0.5)
    loss, _, grads = _ours(training, model)
    trainer = _orpo_trainer(model, tokenizer, tmp_path, 0.5)
    batch = training.make([0, 1, 2])
    n = len(pairs)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # TRL's per-token mean log-probs and odds-ratio term; transformers' own response NLL
    mean = trainer.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    odds, *_ = trainer.odds_ratio_loss(mean[:n], mean[n:])
    nll = model(
        input_ids=batch["input_ids"][:n],
        attention_mask=batch["attention_mask"][:n],
        labels=batch["labels"][:n],
    ).loss
    reference = nll - odds.mean()
    reference.backward()
    _assert_same(grads, _grads(model))
    torch.testing.assert_close(loss, reference.detach(), rtol=0, atol=ATOL)
