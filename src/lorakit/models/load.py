"""Model names -> (model, tokenizer), offline.

A name is, in this order: an alias (`minilm`, `smollm2-135m`), a local HF model directory, a
`.gguf` file, or a hub id already in the local HF cache. Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lorakit.errors import ConfigError, ModelNotFoundError
from lorakit.models.attention import use_fp32_attention
from lorakit.models.gguf_cache import cached_gguf_dir
from lorakit.models.head_input import contiguous_head_input
from lorakit.models.paths import ALIASES, alias_path

Task = Literal["classification", "causal-lm"]
TASKS = ("classification", "causal-lm")
log = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points. `path` is an HF directory, or a .gguf file."""

    name: str
    kind: Literal["alias", "dir", "gguf", "hub"]
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"


def _alternatives() -> str:
    return (
        "use a local model directory (with config.json), a .gguf file, a hub id already in "
        f"the local HF cache, or an alias: {', '.join(ALIASES)}"
    )


def resolve_model(name: str | Path) -> ModelSource:
    """Find what `name` refers to, without loading anything."""
    text = str(name)
    if text in ALIASES:
        return ModelSource(text, "alias", alias_path(text))
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(
                f"{path} is a file but not a .gguf file — pass its directory instead, or "
                + _alternatives()
            )
        return ModelSource(text, "gguf", path)
    if path.is_dir():
        return ModelSource(text, "dir", _model_dir(path))
    if text.endswith(".gguf") or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(f"{text} does not exist — check the path, or {_alternatives()}")
    snapshot = _hub_snapshot(text)
    if snapshot is None:
        raise ModelNotFoundError(
            f"{text!r} is not a local path and not in the local HF cache (lorakit works "
            f"offline) — {_alternatives()}"
        )
    return ModelSource(text, "hub", snapshot)


def _model_dir(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:  # a directory holding one GGUF file means that file
        return ggufs[0]
    found = ", ".join(p.name for p in sorted(path.iterdir())[:8]) or "nothing"
    raise ModelNotFoundError(
        f"{path} has no config.json (found: {found}) — pass an HF model directory, a .gguf "
        "file, or an alias: " + ", ".join(ALIASES)
    )


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of `repo_id`, or None; never downloads."""
    if not _HUB_ID.match(repo_id):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # an id huggingface_hub rejects
        return None
    return Path(config).parent if isinstance(config, str) else None


def model_dir(source: ModelSource) -> Path:
    """The HF directory to load `source` from (a GGUF file is converted once, then cached)."""
    return cached_gguf_dir(source.path) if source.is_gguf else source.path


def load_tokenizer(directory: str | Path, task: Task = "causal-lm"):
    """The tokenizer of an HF directory, with a pad token.

    Causal LM tokenizers pad on the LEFT: batched generation appends new tokens on the right,
    so real tokens must end at the last column. Training does not depend on this setting:
    `lorakit.data.batching.collate` pads on the right itself, so position ids start at 0.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelNotFoundError(
            f"no usable tokenizer in {directory} ({str(exc).splitlines()[0][:120]}) — save the "
            "tokenizer next to the model: tokenizer.save_pretrained(<dir>)"
        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelNotFoundError(
                f"the tokenizer in {directory} has neither a pad nor an eos token — add a "
                "pad_token to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token  # masked out by attention_mask and -100 labels
    tokenizer.padding_side = "left" if task == "causal-lm" else "right"
    return tokenizer


def load_model(
    name: str | Path,
    task: Task,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
):
    """(model, tokenizer) for `task`, loaded from local files only.

    classification: a sequence-classification model; a checkpoint without a matching head
    gets a NEW head of `num_labels` (= len(label_names)) outputs, initialised from `seed`.
    A checkpoint whose head already has that size keeps it (a merged classifier reloads).
    With neither `num_labels` nor `label_names`, the checkpoint's own labels are used.
    causal-lm: a causal LM with its LM head.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r} — use one of: {', '.join(TASKS)}")
    source = resolve_model(name)
    directory = model_dir(source)
    tokenizer = load_tokenizer(directory, task)
    kwargs: dict = {"dtype": dtype, "local_files_only": True, "use_safetensors": True}
    if task == "classification":
        from transformers import AutoModelForSequenceClassification as auto_cls

        kwargs.update(_label_kwargs(num_labels, label_names))
        kwargs["ignore_mismatched_sizes"] = True  # a head of another size is replaced, not an error
    else:
        from transformers import AutoModelForCausalLM as auto_cls
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, _quiet_transformers():
        if seed is not None:
            torch.manual_seed(seed)  # the new head's init, without touching the caller's RNG
        try:
            model, info = auto_cls.from_pretrained(directory, output_loading_info=True, **kwargs)
        except ValueError as exc:
            if "Unrecognized configuration class" not in str(exc):
                raise
            raise ConfigError(_no_variant(source.name, task)) from None
        except OSError as exc:
            raise ModelNotFoundError(
                f"could not load weights from {directory}: {exc} — lorakit reads safetensors "
                "only (pickle .bin files are refused); convert the weights to model.safetensors"
            ) from None
    missing = sorted(info["missing_keys"]) + sorted(k for k, *_ in info["mismatched_keys"])
    if task == "causal-lm" and missing:
        # e.g. a BERT encoder loads as BertLMHeadModel with a random LM head: useless, say so
        raise ConfigError(
            _no_variant(source.name, task) + f" (untrained: {', '.join(missing[:3])})"
        )
    if missing:
        log.info("new classification head for %s: %s", source.name, ", ".join(missing))
    if model.config.pad_token_id is None:
        # decoder classifiers find each row's last real token through pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
    if dtype in (torch.bfloat16, torch.float16):
        # every half-precision model (train, eval, generate, serve) runs the same attention,
        # so a metric logged while training is the one `eval` reproduces; see attention.py
        use_fp32_attention(model)
    if task == "causal-lm":
        contiguous_head_input(model)  # prefill's last-position slice: see head_input.py
    return model, tokenizer


def _no_variant(name: str, task: str) -> str:
    return (
        f"{name} has no trained {task} model — use task classification for encoders such "
        "as minilm, causal-lm for decoders such as smollm2-135m"
    )


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report: a new head is expected here, and reported by us."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _label_kwargs(num_labels: int | None, label_names: list[str] | None) -> dict:
    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ConfigError(
                f"label_names must be at least two distinct names, got {names} — check the "
                "label column"
            )
        if num_labels is not None and num_labels != len(names):
            raise ConfigError(
                f"num_labels={num_labels} but {len(names)} label_names — give one of them"
            )
    elif num_labels is not None:
        if num_labels < 1:
            raise ConfigError(f"num_labels must be positive, got {num_labels}")
        names = [f"LABEL_{i}" for i in range(num_labels)]
    else:
        return {}  # keep the checkpoint's own labels
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
