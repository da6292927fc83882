"""transformers architectures as llama.cpp sees them: GGUF architecture, hyperparameters, names.

A transformers checkpoint and a GGUF file hold the same matrices under other names and, for
some families, in another layout. What differs per family is small and lives here:

- the GGUF architecture name and its hyperparameter keys (`llama.block_count`, ...);
- tensor names, from the `gguf` package's own name map (`TensorNameMap`);
- layout: Llama-style rotary attention. transformers rotates the two *halves* of each head
  (`rotate_half`), GGML's llama rope rotates *adjacent pairs*, so the rows of q_proj / k_proj
  are reordered per head: row i of the half-split layout goes to position 2i (first half) or
  2(i - d/2) + 1 (second half). A LoRA adapter on q / k reorders B's rows the same way (A
  works on the input side and is unchanged). GPT-2's Conv1D stores weights [in, out]; GGUF
  wants [out, in]. Gemma's RMSNorm multiplies by (1 + w); llama.cpp's by the stored weight,
  so w + 1 is stored. Gemma's output matrix is always the embedding in llama.cpp.

Families not listed are refused with one line naming the architecture, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import torch

from lorakit.errors import ConfigError


class UnsupportedExportError(ConfigError):
    """What the target format cannot express (a one-line error, exit code 2)."""


@dataclass(frozen=True)
class Arch:
    model_type: str  # transformers' config.model_type
    gguf_name: str  # general.architecture
    enum: gguf.MODEL_ARCH
    rotary_pairs: bool  # q / k rows reordered from half-split to adjacent pairs
    conv1d: bool = False  # GPT-2: Linear weights stored transposed
    norm_plus_one: bool = False  # Gemma: RMSNorm weights stored as 1 + w
    tied_output: bool = False  # llama.cpp reads no output matrix: it must be the embedding


ARCHS = {
    a.model_type: a
    for a in (
        Arch("llama", "llama", gguf.MODEL_ARCH.LLAMA, rotary_pairs=True),
        # llama.cpp runs Mistral as llama (its sliding window is not modelled there either)
        Arch("mistral", "llama", gguf.MODEL_ARCH.LLAMA, rotary_pairs=True),
        Arch("qwen2", "qwen2", gguf.MODEL_ARCH.QWEN2, rotary_pairs=False),
        Arch("qwen3", "qwen3", gguf.MODEL_ARCH.QWEN3, rotary_pairs=False),
        Arch("gpt2", "gpt2", gguf.MODEL_ARCH.GPT2, rotary_pairs=False, conv1d=True),
        Arch(
            "gemma",
            "gemma",
            gguf.MODEL_ARCH.GEMMA,
            rotary_pairs=False,
            norm_plus_one=True,
            tied_output=True,
        ),
        Arch("phi3", "phi3", gguf.MODEL_ARCH.PHI3, rotary_pairs=False),
        # Gemma 3's text model: sliding-window layers with their own rope base, q / k norms
        Arch(
            "gemma3_text",
            "gemma3",
            gguf.MODEL_ARCH.GEMMA3,
            rotary_pairs=False,
            norm_plus_one=True,
        ),
    )
}
# buffers in some state dicts that are not weights
_NOT_WEIGHTS = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def arch_of(config) -> Arch:
    """The Arch of a transformers config, or a one-line error naming what is supported."""
    arch = ARCHS.get(getattr(config, "model_type", None))
    if arch is None:
        raise UnsupportedExportError(
            f"GGUF export does not support architecture {config.model_type!r} yet — supported: "
            f"{', '.join(sorted(ARCHS))}; use --format transformers or --format peft instead"
        )
    _check_rope(config)
    return arch


def _rope(config, layer_type: str = "full_attention") -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type in params:  # one set per layer type (Gemma 3: sliding / full attention)
        params = params[layer_type]
    if not params and getattr(config, "rope_theta", None) is not None:  # older transformers
        params = {"rope_theta": config.rope_theta, **(getattr(config, "rope_scaling", None) or {})}
    return params


def _check_rope(config) -> None:
    kind = _rope(config).get("rope_type", "default")
    if kind not in ("default", "linear"):
        raise UnsupportedExportError(
            f"GGUF export does not write rope scaling {kind!r} yet (supported: default, linear)"
        )
    if config.model_type == "gemma3_text":
        _check_gemma3(config)


def _check_gemma3(config) -> None:
    """What llama.cpp's Gemma 3 fixes that transformers' config could set otherwise."""
    if _rope(config, "sliding_attention").get("rope_type", "default") != "default" or (
        _rope(config).get("rope_type", "default") != "default"
    ):
        raise UnsupportedExportError("GGUF gemma3: rope scaling is not written yet")
    # llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) at 62 layers)
    n = config.num_hidden_layers
    scale_dim = config.hidden_size // config.num_attention_heads if n == 62 else head_dim(config)
    if config.query_pre_attn_scalar != scale_dim or config.attn_logit_softcapping:
        raise UnsupportedExportError(
            f"GGUF gemma3: llama.cpp fixes the query scale to 1/sqrt({scale_dim}) and no "
            f"attention softcap; this config has query_pre_attn_scalar="
            f"{config.query_pre_attn_scalar} — export --format transformers instead"
        )


def head_dim(config) -> int:
    explicit = getattr(config, "head_dim", None)
    return explicit or config.hidden_size // config.num_attention_heads


def write_hparams(writer: gguf.GGUFWriter, config, arch: Arch) -> None:
    """The architecture's hyperparameter keys, from the transformers config."""
    if arch.conv1d:  # GPT-2's config spells everything its own way
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        writer.add_vocab_size(config.vocab_size)
        return
    heads = config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    dim = head_dim(config)
    partial = getattr(config, "partial_rotary_factor", None) or rope.get("partial_rotary_factor")
    writer.add_rope_dimension_count(int(dim * (partial or 1.0)))
    if arch.gguf_name == "phi3" and getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
    if dim != config.hidden_size // heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    if arch.gguf_name == "gemma3":
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
        writer.add_rope_freq_base_swa(float(_rope(config, "sliding_attention")["rope_theta"]))
        if config.final_logit_softcapping:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def tensor_name(names: gguf.TensorNameMap, hf_name: str) -> str | None:
    """GGUF name of a transformers parameter ("model.layers.0.self_attn.q_proj.weight" ->
    "blk.0.attn_q.weight"); None for buffers that are not weights. Raises for a weight the
    architecture has no place for (the file would not load)."""
    if hf_name.endswith(_NOT_WEIGHTS):
        return None
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UnsupportedExportError(
            f"GGUF export: no GGUF tensor for {hf_name!r} in this architecture — the model has "
            "parts llama.cpp does not run"
        )
    return name


def module_name(names: gguf.TensorNameMap, module: str) -> str:
    """GGUF base name of a module ("model.layers.0.self_attn.q_proj" -> "blk.0.attn_q")."""
    name = names.get_name(module)
    if name is None:
        raise UnsupportedExportError(
            f"gguf-lora: llama.cpp has no tensor for adapted module {module!r} — merge the "
            "adapter instead (--format gguf)"
        )
    return name


def rotary_heads(config, hf_name: str) -> int | None:
    """Heads to reorder for a q / k projection output ("...q_proj..." / "...k_proj..."), else None."""
    if ".q_proj" in hf_name:
        return config.num_attention_heads
    if ".k_proj" in hf_name:
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def to_rotary_pairs(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the output rows of q / k (or of LoRA B on them) from transformers' half-split
    rotary layout to GGML's adjacent-pair layout, head by head."""
    out = rows.shape[0]
    half = out // heads // 2
    return rows.reshape(heads, 2, half, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def to_gguf_layout(arch: Arch, config, hf_name: str, weight: torch.Tensor) -> torch.Tensor:
    """A transformers weight in the layout llama.cpp expects for `arch`."""
    if arch.conv1d and hf_name.endswith(_CONV1D):
        return weight.t().contiguous()
    if arch.norm_plus_one and hf_name.endswith("norm.weight"):
        return weight + 1
    if arch.rotary_pairs:  # weights and (rare) q / k biases alike
        heads = rotary_heads(config, hf_name)
        if heads is not None:
            return to_rotary_pairs(weight, heads)
    return weight
