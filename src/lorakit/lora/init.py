"""Initialisation of a new adapter's A and B (and PiSSA's base residual)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lorakit.lora.layer import Adapter, LoraLayer, refuse_quantized


@torch.no_grad()
def init_adapter(layer: LoraLayer, adapter: Adapter, method: str) -> None:
    """Fill A and B. gaussian / kaiming keep B = 0 so the layer starts equal to its base."""
    if layer.kind == "embedding":  # peft's convention for embeddings: A = 0, B ~ N(0, 1)
        nn.init.zeros_(adapter.A)
        nn.init.normal_(adapter.B)
        if method == "pissa":
            _pissa(layer, adapter)
        return
    if method == "gaussian":
        nn.init.normal_(adapter.A, std=1.0 / adapter.r)
    elif method == "kaiming":
        nn.init.kaiming_uniform_(adapter.A, a=math.sqrt(5))
    elif method == "pissa":
        _pissa(layer, adapter)
        return
    else:
        raise ValueError(f"unknown init {method!r}")
    nn.init.zeros_(adapter.B)


def _pissa(layer: LoraLayer, adapter: Adapter) -> None:
    """PiSSA (Meng et al. 2024): B A = top-r SVD of W / scaling; the base keeps the residual.

    The layer's output is unchanged at init: W_res + scaling * B A = W.
    """
    refuse_quantized(
        layer.base_layer,
        "initialise an adapter with PiSSA (it moves part of W into B A)",
        "inject with init='pissa' before quantizing",
    )
    W = layer.weight_linear
    U, S, Vh = torch.linalg.svd(W.detach().to(torch.float32), full_matrices=False)
    r = adapter.r
    root = torch.sqrt(S[:r] / adapter.scaling)
    B = U[:, :r] * root  # [out, r]
    A = root[:, None] * Vh[:r]  # [r, in]
    adapter.A.copy_(A)
    adapter.B.copy_(B)
    adapter.A0 = A.clone()
    adapter.B0 = B.clone()
    W.sub_((adapter.scaling * B @ A).to(W.dtype))
