"""Training: one loop for LoRA, DoRA, full fine-tuning and head-only; checkpoints and resume."""

__all__ = ["test_metrics", "train"]


def __getattr__(name: str):
    # Lazy: `lorakit.train.loss` (used by benchmarks and the GPU machine) must not pull in
    # the data stack (datasets, evaluation) that `train` needs.
    if name in __all__:
        from lorakit.train import run

        return getattr(run, name)
    raise AttributeError(f"module 'lorakit.train' has no attribute {name!r}")
