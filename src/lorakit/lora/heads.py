"""A model's output head, found by duck typing (transformers' method names, no import of it)."""

from __future__ import annotations

from torch import nn

from lorakit.errors import ConfigError

# where transformers' sequence-classification models keep their head, in lookup order
CLASSIFIER_NAMES = ("classifier", "score", "head", "classification_head")
# the heads peft's 'all-linear' leaves alone on a SEQ_CLS model without output embeddings
SEQ_CLS_HEADS = ("score", "classifier")


def output_head(model: nn.Module) -> nn.Module | None:
    """What `model.get_output_embeddings()` returns (a causal LM's head), or None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def head_name(model: nn.Module, task: str) -> str:
    """The output head's module name: the output embeddings for "causal-lm", else the
    classifier (the first of CLASSIFIER_NAMES that is a module attribute of `model`)."""
    if task == "causal-lm":
        head = output_head(model)
        names = [n for n, m in model.named_modules() if m is head] if head is not None else []
        if not names:
            raise ConfigError(f"cannot find the output embeddings of {type(model).__name__}")
        return names[0]
    for name in CLASSIFIER_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ConfigError(f"cannot find the classification head of {type(model).__name__}")


def output_head_names(model: nn.Module, task_type: str | None = None) -> list[str]:
    """The output layer(s) 'all-linear' leaves alone (peft's rule): the output embeddings'
    module, or when there are none and `task_type` is "SEQ_CLS", the SEQ_CLS_HEADS."""
    heads: list[nn.Module] = []
    if (out := output_head(model)) is not None:
        heads.append(out)
    elif task_type == "SEQ_CLS":
        heads += [
            getattr(model, h)
            for h in SEQ_CLS_HEADS
            if isinstance(getattr(model, h, None), nn.Module)
        ]
    return [n for n, m in model.named_modules() if any(m is h for h in heads)]
