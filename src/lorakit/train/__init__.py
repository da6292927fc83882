"""Training: one loop for LoRA, DoRA, full fine-tuning and head-only; checkpoints and resume."""

__all__ = ["train"]


def __getattr__(name: str):
    # Lazy: importing one submodule (`lorakit.train.distributed`, `.checkpoint`) must not
    # pull in the data stack (datasets, evaluation) that `train` needs.
    if name in __all__:
        from lorakit.train import entry

        return getattr(entry, name)
    raise AttributeError(f"module 'lorakit.train' has no attribute {name!r}")
