"""A LoRA layer: a frozen base layer (Linear, GPT-2 Conv1D or Embedding) plus named adapters.

Every kind is handled in "linear form": the base weight seen as W with shape [out, in]
(Linear: W; Conv1D: weight.T; Embedding: weight.T with in = vocabulary size), so one
update rule serves all three:  h = base(x) + scaling * B @ A x,  A: [r, in], B: [out, r].
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import ConfigError

KINDS = ("linear", "conv1d", "embedding")


def layer_kind(module: nn.Module) -> str | None:
    """Which LoRA kind a module is, or None if it cannot carry an adapter."""
    if is_quantized(module):
        return module.lora_kind
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    # transformers' GPT-2 Conv1D, recognised by shape so that lora/ never imports transformers.
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return "conv1d"
    return None


def linear_form(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The base weight as a [out, in] view sharing storage (so in-place edits reach the base)."""
    return weight if kind == "linear" else weight.T


def is_quantized(module: nn.Module) -> bool:
    """A quantized frozen base (lorakit.models.quant_layers): codes + dequantized(), no `weight`.

    Read on the class: wrappers (LoraLayer, ModulesToSave) hand attribute reads through to
    what they wrap, and are not quantized modules themselves."""
    cls = type(module)
    return bool(getattr(cls, "quant_type", None)) and callable(getattr(cls, "dequantized", None))


def linear_shape(module: nn.Module, kind: str) -> tuple[int, int]:
    """(out, in) of a base layer in linear form, without dequantizing a quantized one."""
    if not is_quantized(module):
        return tuple(linear_form(module.weight, kind).shape)
    if kind == "embedding":
        return module.embedding_dim, module.num_embeddings
    return module.out_features, module.in_features


def refuse_quantized(base: nn.Module, what: str, fix: str = "") -> None:
    """One-line error for what would edit a quantized base weight in place (a no-op on codes)."""
    if is_quantized(base):
        raise ConfigError(
            f"cannot {what}: its base is {base.quant_type}-quantized — "
            + (fix or "call lorakit.models.quantize.dequantize(model) first")
        )


class PerRow(Protocol):
    """What `adapter_per_row` (lorakit.lora.per_row) installs as a LoRA module's `rows`:
    the forwards in which each batch row uses its own adapter. The layer calls it, so this
    file never imports the per-row code."""

    def layer_forward(self, layer: LoraLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """A LoraLayer's forward with each row's adapter."""
        ...

    def saved_forward(self, wrapper: nn.Module, x: torch.Tensor, *args, **kwargs):
        """A ModulesToSave's forward with each row through its adapter's copy."""
        ...


class Adapter(nn.Module):
    """One adapter on one layer: A [r, in], B [out, r], and DoRA's magnitude [out] if used.

    Gaussian init (A ~ N(0, 1/r), B = 0) makes the adapted layer start equal to the base,
    as in the LoRA paper. Embeddings follow peft: A = 0, B ~ N(0, 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        alpha: float,
        *,
        use_rslora: bool = False,
        use_dora: bool = False,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if r <= 0:
            raise ConfigError(f"r must be a positive integer, got {r} — pick r >= 1")
        self.r, self.alpha, self.use_rslora, self.use_dora = r, float(alpha), use_rslora, use_dora
        self.dropout = dropout
        self.A = nn.Parameter(torch.zeros(r, in_features, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype, device=device))
        self.magnitude = (
            nn.Parameter(torch.ones(out_features, dtype=dtype, device=device)) if use_dora else None
        )
        # PiSSA keeps its starting A, B so the saved adapter can be expressed against the
        # original (un-residualised) base weight.
        self.register_buffer("A0", None, persistent=False)
        self.register_buffer("B0", None, persistent=False)

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A, shape [out, in] (before DoRA's rescaling)."""
        return self.scaling * (self.B @ self.A)

    def dora_norm(self, W: torch.Tensor) -> torch.Tensor:
        """||W + scaling * B A|| per output row, detached as in the DoRA paper (sec. 4.3)."""
        delta = self.delta_weight().detach().to(torch.float32)
        return torch.linalg.vector_norm(W.detach().to(torch.float32) + delta, dim=1)

    def dora_scale(self, W: torch.Tensor) -> torch.Tensor:
        """m / ||W + scaling * B A|| per output row: DoRA's factor on the adapted output."""
        return self.magnitude / self.dora_norm(W).to(self.magnitude.dtype)

    def extra_repr(self) -> str:
        dora = ", dora" if self.use_dora else ""
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}{dora}"


class LoraLayer(nn.Module):
    """Wraps a base layer; adds the active adapters' updates in forward.

    State is explicit: `active` (names summed in forward), `merged` (names folded into the
    base weight, so skipped in forward), `disabled` (base only), `rows` (per-row plan
    installed by `adapter_per_row`). Nothing changes as a side effect of train()/eval().
    """

    def __init__(self, base_layer: nn.Module, kind: str | None = None):
        super().__init__()
        kind = kind or layer_kind(base_layer)
        if kind not in KINDS:
            raise ConfigError(f"cannot put LoRA on {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.kind = kind
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False
        self.rows: PerRow | None = None  # set by lorakit.lora.per_row.adapter_per_row

    # -- shape of the base in linear form -------------------------------------------------
    @property
    def in_features(self) -> int:
        return linear_shape(self.base_layer, self.kind)[1]

    @property
    def out_features(self) -> int:
        return linear_shape(self.base_layer, self.kind)[0]

    @property
    def weight_linear(self) -> torch.Tensor:
        """W [out, in]: a view of the base weight; of a quantized base, a fresh dequantized
        copy (edits would not reach the base: merge and PiSSA refuse one)."""
        if is_quantized(self.base_layer):
            return linear_form(self.base_layer.dequantized(), self.kind)
        return linear_form(self.base_layer.weight, self.kind)

    @property
    def base_tensor(self) -> torch.Tensor:
        """The tensor holding the base weight (a quantized base: its codes): device, versions."""
        base = self.base_layer
        return base.codes if is_quantized(base) else base.weight

    def __getattr__(self, name: str):
        # Code around the model reads `.weight`, `.bias`, `.num_embeddings`, ... of the
        # layer it thinks is there; hand those through to the base layer.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    # -- adapters --------------------------------------------------------------------------
    def add_adapter(self, name: str, adapter: Adapter) -> None:
        adapter.to(self.base_tensor.device)
        self.adapters[name] = adapter
        if adapter.use_dora:
            with torch.no_grad():
                adapter.magnitude.copy_(adapter.dora_norm(self.weight_linear))

    def remove_adapter(self, name: str) -> None:
        if name in self.merged:
            raise ConfigError(f"adapter {name!r} is merged — unmerge before deleting it")
        adapter = self.adapters[name]
        if adapter.A0 is not None:  # PiSSA: give the base back its principal part
            refuse_quantized(self.base_layer, f"give PiSSA adapter {name!r}'s part back to W")
            with torch.no_grad():
                W = self.weight_linear
                W.add_((adapter.scaling * adapter.B0 @ adapter.A0).to(W.dtype))
        del self.adapters[name]
        self.active = [n for n in self.active if n != name]

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.rows is not None:
            return self.rows.layer_forward(self, x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        for name in self.active:
            if name not in self.merged and name in self.adapters:
                result = self._add_update(result, x, self.adapters[name])
        return result

    def _add_update(self, result: torch.Tensor, x: torch.Tensor, ad: Adapter) -> torch.Tensor:
        # Under autocast the matmuls pick their own dtype: casting x to the fp32 adapter
        # would only add a copy of the activations.
        autocast = torch.is_autocast_enabled(x.device.type)
        A, B = ad.A, ad.B
        if not autocast and is_half(result.dtype) and A.dtype != result.dtype:
            # A half-precision base (--precision bf16): the fp32 A and B are cast for the
            # matmuls (r x in, cheap; gradients flow back into fp32), the activations never.
            A, B = A.to(result.dtype), B.to(result.dtype)
        if self.kind == "embedding":
            h = self._embed(x, A.T)  # [..., r]
            # an embedding that scales its output (Gemma's sqrt(hidden)) scales the update too
            scaling = ad.scaling * embed_scale(self.base_layer)
            if not ad.use_dora:
                return _add_scaled(result, h, B, scaling, autocast)
            # DoRA on an embedding (peft's): m/||W'|| per embedding feature (out = dim), the
            # norm taken over the vocabulary of the unscaled weights; no bias, no dropout
            lora = F.linear(h.to(ad.B.dtype), ad.B) * scaling
            return _add_dora(result, result, lora, ad.dora_scale(self.weight_linear))
        xa = x if x.dtype == A.dtype or autocast else x.to(A.dtype)
        dropped = self.training and ad.dropout > 0
        if dropped:  # with dropout 0 there is no extra copy of the input
            xa = F.dropout(xa, ad.dropout, training=True)
        h = F.linear(xa, A)  # [..., r]
        if not ad.use_dora:
            return _add_scaled(result, h, B, ad.scaling, autocast)
        # DoRA (peft's formulation): result += (m/||W'|| - 1) * base(x) + m/||W'|| * scaling * B A x
        W = self.weight_linear
        mag_scale = ad.dora_scale(W).view(1, -1)
        bias = getattr(self.base_layer, "bias", None)
        if dropped:
            base = F.linear(xa, W.to(xa.dtype))
        else:
            base = result if bias is None else result - bias
        lora = F.linear(h, B) * ad.scaling
        return _add_dora(result, base, lora, mag_scale)

    def _embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        return F.embedding(
            ids, table, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind}, active={self.active}, merged={self.merged}"


def is_half(dtype: torch.dtype) -> bool:
    """bf16 / fp16: a base stored in half precision (--precision bf16 or fp16)."""
    return dtype in (torch.bfloat16, torch.float16)


def _add_dora(
    result: torch.Tensor, base: torch.Tensor, lora: torch.Tensor, mag_scale: torch.Tensor
) -> torch.Tensor:
    """DoRA (peft's formulation): result + (m/||W'|| - 1) * base(x) + m/||W'|| * lora(x)."""
    dora = (mag_scale - 1) * base.to(mag_scale.dtype) + mag_scale * lora
    return result + dora.to(result.dtype)


def embed_scale(base: nn.Module) -> float:
    """The scalar an embedding multiplies its output by in forward (Gemma's
    `embed_scale` = sqrt(hidden_size)); 1.0 for a plain nn.Embedding. As peft: only a
    scalar counts."""
    scale = getattr(base, "embed_scale", None)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return float(scale)
    return float(scale) if isinstance(scale, int | float) else 1.0


def _add_scaled(
    result: torch.Tensor, h: torch.Tensor, B: torch.Tensor, scaling: float, autocast: bool
) -> torch.Tensor:
    """result + scaling * h @ B.T, fused into one addmm when dtypes agree (or autocast casts)."""
    same = result.dtype == B.dtype or autocast
    if same and not torch.is_grad_enabled():
        # Inference: `result` is the base layer's fresh output and nothing keeps it for
        # backward, so the update goes into it in place (no second output-sized tensor).
        return result.add_(F.linear(h, B), alpha=scaling)
    if same and result.dim() >= 2:
        out = result.shape[-1]
        fused = torch.addmm(result.reshape(-1, out), h.reshape(-1, h.shape[-1]), B.T, alpha=scaling)
        return fused.view(result.shape)
    return result + (F.linear(h, B) * scaling).to(result.dtype)
