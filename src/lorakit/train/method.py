"""The training method: which parameters train (lora / dora / full / head), the adapter a run
starts from (a fresh one, or --init-adapter and, for DPO, its frozen copy as the reference),
the quantized base under adapters, and activation checkpointing."""

from __future__ import annotations

from torch import nn

from lorakit.adapters import attach_adapter, read_adapter
from lorakit.config import TrainConfig
from lorakit.errors import ConfigError
from lorakit.lora import inject, set_adapter
from lorakit.lora.heads import head_name

TRAINED = "default"  # the adapter a run trains and saves
REFERENCE = "reference"  # DPO's frozen copy of --init-adapter


def apply_method(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Make exactly the parameters of `config.method` trainable (the fair-comparison switch)."""
    _method(model, config)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in backward (transformers' per-layer checkpoints).

    Non-reentrant torch.utils.checkpoint: it works with frozen inputs (LoRA) and keeps the
    RNG state, so a run with dropout gives the same numbers with or without it.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{type(model).__name__} does not support activation checkpointing — "
            "drop --activation-checkpointing"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _method(model: nn.Module, config: TrainConfig) -> nn.Module:
    if config.model_dropout is not None:
        # Every nn.Dropout of the model; attention implementations read the same modules' p.
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = config.model_dropout
    if config.method in ("lora", "dora"):
        if config.init_adapter is not None:
            start_from_adapter(model, config)
        else:
            saved = [head_name(model, config.task)] if config.task == "classification" else None
            inject(model, config.lora_config(modules_to_save=saved))
        if config.quantize != "none":  # after inject: LoRA layers wrap the quantized bases
            from lorakit.models.quantize import quantize

            quantize(model, config.quantize)
        return model
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    head = model.get_submodule(head_name(model, config.task))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return model


def start_from_adapter(model: nn.Module, config: TrainConfig) -> None:
    """--init-adapter: the adapter, trainable, is the run's starting point; for DPO a second,
    frozen copy of it is the reference (the same base serves both)."""
    read = read_adapter(config.init_adapter)
    attach_adapter(model, read, TRAINED, trainable=True)
    if config.objective == "dpo":
        attach_adapter(model, read, REFERENCE, trainable=False)
    set_adapter(model, TRAINED)
