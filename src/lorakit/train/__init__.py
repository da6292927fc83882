"""Training: one loop for LoRA, DoRA, full fine-tuning and head-only; checkpoints and resume."""

from lorakit.train.run import test_metrics, train

__all__ = ["test_metrics", "train"]
