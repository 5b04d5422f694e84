"""The layer types LoRA wraps, one object each: how to read W as (out, in), run the base layer, and
feed an input to A.

=============  ==================  ===============  =====================================
kind           weight stored       (in, out)        A·x for an input x
=============  ==================  ===============  =====================================
Linear         (out, in)           (in, out)        x·Aᵀ, x (..., in)
GPT-2 Conv1D   (in, out)           (in, out)        x·Aᵀ, x (..., in)
Embedding      (vocab, dim)        (vocab, dim)     the columns of A at the token ids, x (...,) ints
=============  ==================  ===============  =====================================

For an Embedding "in" is the vocabulary, as in PEFT: A is (r, vocab), B is (dim, r). A new kind is a
`LayerKind` subclass registered in `KINDS`, and its key names in `loralab.io.peft_format`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from loralab.errors import AdapterError


def conv1d_class():
    """transformers' GPT-2 ``Conv1D`` (weight stored (in, out)), or None without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is optional
        return None
    return Conv1D


class LayerKind:
    """What differs between the wrapped layer types; every method is a pure function of the layer."""

    name: ClassVar[str] = ""
    fused: ClassVar[bool] = True  # a dense x (..., in): the fused autograd nodes and inference products apply
    dora: ClassVar[bool] = True  # DoRA's magnitude is defined (a row norm of a dense weight)
    inits: ClassVar[tuple[str, ...]] = ("default", "gaussian", "pissa", "olora")

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    @torch.no_grad()
    def init_factors(self, lora_A: torch.Tensor, lora_B: torch.Tensor, init: str) -> None:
        """A Kaiming-uniform (PEFT's default) or N(0, 1/r²) (``gaussian``), B = 0: the update starts at 0."""
        if init == "gaussian":
            nn.init.normal_(lora_A, std=1.0 / lora_A.shape[0])
        else:
            nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
        nn.init.zeros_(lora_B)

    def shape(self, module: nn.Module) -> tuple[int, int]:
        """(in, out) as the adapter sees it: A is (r, in), B is (out, r)."""
        raise NotImplementedError

    def out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """W as (out, in): the stored weight or a transposed view of it (writes reach the weight)."""
        return weight.T

    def copy_attributes(self, base: nn.Module, layer: nn.Module) -> None:
        """Attributes of the base module the adapted layer keeps (besides weight and bias)."""

    def base_forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def low_rank_input(self, layer, x: torch.Tensor, lora_A: torch.Tensor) -> torch.Tensor:
        """A·x for every position, (..., r)."""
        return x @ lora_A.T

    def plain_module(self, layer) -> nn.Module:
        """A plain module of this kind sharing the layer's weight and bias."""
        raise NotImplementedError


class Linear(LayerKind):
    name = "linear"

    def matches(self, module):
        return isinstance(module, nn.Linear)

    def shape(self, module):
        return module.in_features, module.out_features

    def out_in(self, weight):
        return weight

    def base_forward(self, layer, x):
        return F.linear(x, layer.weight, layer.bias)

    def plain_module(self, layer):
        module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        return _share_weights(module, layer)


class Conv1D(LayerKind):
    name = "conv1d"
    inits = ("default", "gaussian", "pissa")  # PEFT's OLoRA is Linear only

    def matches(self, module):
        conv1d = conv1d_class()
        return conv1d is not None and isinstance(module, conv1d)

    def shape(self, module):
        return tuple(module.weight.shape)

    def copy_attributes(self, base, layer):
        layer.nf = base.nf

    def base_forward(self, layer, x):
        out = x @ layer.weight
        return out if layer.bias is None else out + layer.bias

    def plain_module(self, layer):
        return _share_weights(conv1d_class()(layer.nf, layer.in_features), layer)


class Embedding(LayerKind):
    name = "embedding"
    fused = False
    dora = False
    inits = ("default", "gaussian")
    ATTRIBUTES = ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq",
                  "sparse")

    def matches(self, module):
        return isinstance(module, nn.Embedding)

    @torch.no_grad()
    def init_factors(self, lora_A, lora_B, init):
        """PEFT's choice for embeddings: A = 0, B ~ N(0, 1)."""
        nn.init.zeros_(lora_A)
        nn.init.normal_(lora_B)

    def shape(self, module):
        return module.num_embeddings, module.embedding_dim

    def copy_attributes(self, base, layer):
        for attr in self.ATTRIBUTES:
            setattr(layer, attr, getattr(base, attr))

    def base_forward(self, layer, x):
        return F.embedding(x, layer.weight, layer.padding_idx, layer.max_norm, layer.norm_type,
                           layer.scale_grad_by_freq, layer.sparse)

    def low_rank_input(self, layer, x, lora_A):
        return F.embedding(x, lora_A.T, layer.padding_idx)  # the columns of A at the ids, (..., r)

    def plain_module(self, layer):
        module = nn.Embedding(*(getattr(layer, a) for a in self.ATTRIBUTES), device="meta")
        return _share_weights(module, layer)


def _share_weights(module: nn.Module, layer) -> nn.Module:
    module.weight = layer.weight
    if getattr(layer, "bias", None) is not None:
        module.bias = layer.bias
    return module


KINDS: tuple[LayerKind, ...] = (Linear(), Conv1D(), Embedding())
KIND_NAMES = {kind.name: kind for kind in KINDS}


def kind_of(module: nn.Module) -> Optional[LayerKind]:
    """The `LayerKind` of a supported module (an adapted layer: the kind it wraps), else None."""
    wrapped = getattr(module, "layer_kind", None)
    if isinstance(wrapped, LayerKind):
        return wrapped
    return next((kind for kind in KINDS if kind.matches(module)), None)


def layer_kind(module: nn.Module) -> Optional[str]:
    """"linear", "conv1d", "embedding", or None when LoRA does not support the module."""
    kind = kind_of(module)
    return None if kind is None else kind.name


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a supported layer as its adapter sees it: A is (r, in), B is (out, r)."""
    kind = kind_of(module)
    if kind is None:
        raise AdapterError(f"LoRA wraps Linear, Conv1D or Embedding, not {type(module).__name__}.")
    return (module.in_features, module.out_features) if hasattr(module, "layer_kind") else kind.shape(module)


ARTICLES = {"linear": "a Linear", "conv1d": "a GPT-2 Conv1D", "embedding": "an Embedding"}


def check_supported(kind_name: str, dora: bool, init: str, where: str) -> None:
    """Refuse DoRA or an init the layer kind does not support; ``where`` names the layer in the message."""
    kind = KIND_NAMES[kind_name]
    if dora and not kind.dora:
        raise AdapterError(f"DoRA supports Linear and Conv1D layers; {where} is {ARTICLES[kind_name]}. Drop it from the "
                           "targets, or use plain LoRA for it in a second adapter.")
    if init == "pissa" and init not in kind.inits:
        raise AdapterError(f"init='pissa' supports Linear and Conv1D layers; {where} is {ARTICLES[kind_name]}.")
    if init == "olora" and init not in kind.inits:
        raise AdapterError(f"init='olora' supports Linear layers (as PEFT's OLoRA does); {where} is "
                           f"{ARTICLES[kind_name]}.")
