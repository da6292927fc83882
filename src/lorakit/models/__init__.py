"""Model names -> loaded models: default aliases, local dirs, GGUF files, cached hub ids."""

from lorakit.models.gguf_cache import cached_gguf_dir
from lorakit.models.load import ModelSource, load_model, load_tokenizer, model_dir, resolve_model
from lorakit.models.paths import ALIASES, cache_dir, package_dir

__all__ = [
    "ALIASES",
    "ModelSource",
    "cache_dir",
    "cached_gguf_dir",
    "load_model",
    "load_tokenizer",
    "model_dir",
    "package_dir",
    "resolve_model",
]
