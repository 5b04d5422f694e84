"""Fine-tuning inside a random d-dimensional subspace (Li et al. 2018; Aghajanyan et al. 2021).

DID (direct intrinsic dimension) reparameterises the chosen weight tensors, flattened
into one vector θ ∈ R^D, as

    θ = θ0 + P·θ_d,                     θ_d ∈ R^d the only trainable vector,

and SAID (structure-aware, Aghajanyan et al. §3) gives each of the m tensors its own
trainable scale, counted in d:

    θ_i = θ0_i + λ_i·(P·θ_{d−m})_i,     λ ∈ R^m.

θ_d starts at 0 and λ at 1, so training starts from the pretrained model. The model's
own parameters stay untouched as θ0; each forward pass builds θ (`_Assemble`, one autograd
node for all tensors) and runs the model on it with `torch.func.functional_call`;
gradients reach θ_d through Pᵀ, so nothing of size D×d exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file
from torch import nn
from torch.func import functional_call

from loralab.adapters.cache import DerivedCache
from loralab.adapters.inject import name_matches
from loralab.errors import AdapterError
from loralab.io.atomic import atomic_save_tensors, atomic_write_text
from loralab.subspace.projections import Projection, make_projection


class _Assemble(torch.autograd.Function):
    """θ_i = θ0_i + λ_i·(P·θ_d)_i for every moving tensor i (λ_i = 1 for DID), in one node.

    Forward: one projection into a buffer (D,) (padded for Fastfood) and one fused add per
    tensor. Backward, with g_i = ∂L/∂θ_i: ∂L/∂λ_i = ⟨g_i, (P·θ_d)_i⟩, then the same buffer
    is overwritten with λ_i·g_i and handed to Pᵀ. Composed from autograd ops, the step would
    allocate about ten D-sized temporaries; here it is the projection's scratch only.
    """

    @staticmethod
    def forward(ctx, theta_d, said_lambda, projection: Projection, theta0: list, sizes: list):
        buffer = projection.forward_buffer(theta_d)  # P·θ_d in the first D entries
        scales = said_lambda.tolist() if said_lambda is not None else [1.0] * len(theta0)
        chunks = buffer[: projection.full_dim].split(sizes)
        out = tuple(torch.add(t0, chunk.view(t0.shape), alpha=lam) for t0, chunk, lam in zip(theta0, chunks, scales))
        ctx.buffer, ctx.projection, ctx.sizes, ctx.scales = buffer, projection, sizes, scales
        ctx.said = said_lambda is not None
        return out

    @staticmethod
    def backward(ctx, *grads):
        buffer, projection = ctx.buffer, ctx.projection
        ctx.buffer = None
        chunks = buffer[: projection.full_dim].split(ctx.sizes)
        grad_lambda = buffer.new_zeros(len(chunks)) if ctx.said else None
        for index, (chunk, grad, lam) in enumerate(zip(chunks, grads, ctx.scales)):
            if grad is None:
                chunk.zero_()
                continue
            grad = grad.reshape(-1)
            if grad_lambda is not None:
                grad_lambda[index] = torch.dot(grad, chunk)  # before the chunk is overwritten
            torch.mul(grad, lam, out=chunk)
        return projection.transpose_(buffer), grad_lambda, None, None, None


class IntrinsicModel(nn.Module):
    """Wraps ``model`` so that only θ_d (and SAID's λ) train; call it like the model.

    Args:
        model: Any module; its parameters become θ0 and are frozen.
        dim: d, the number of trainable values (SAID's λ included).
        projection: "fastfood" (default), "dense" or "sparse".
        said: Per-tensor scales λ (SAID) or none (DID).
        targets: Which parameter tensors move: a regex (full match) or a list of names
            matched exactly or as a ``.suffix`` against the parameter or its module
            (e.g. ``["query", "value", "classifier"]``); None moves all of them.
        seed: Seed of the projection.
    """

    def __init__(self, model: nn.Module, dim: int, projection: str = "fastfood", said: bool = True,
                 targets: Optional[Union[str, list[str]]] = None, seed: int = 0):
        super().__init__()
        self.model = model
        names = [n for n, _ in model.named_parameters()]
        if targets is not None:
            names = [n for n in names if name_matches(targets, n) or name_matches(targets, n.rsplit(".", 1)[0])]
            if not names:
                examples = [n for n, _ in model.named_parameters()][:6]
                raise AdapterError(f"no parameter matches targets={targets!r}; parameters look like {examples}")
        self.names = names
        params = dict(model.named_parameters())
        self.sizes = [params[n].numel() for n in names]
        self.full_dim = sum(self.sizes)
        self.said = said
        n_lambda = len(names) if said else 0
        if not isinstance(dim, int) or dim <= n_lambda:
            raise AdapterError(
                f"d={dim} is too small: SAID spends one of the d values on each of the {n_lambda} moving tensors; "
                f"use d > {n_lambda}, or DID (no per-tensor scales), or fewer --targets."
            )
        self.dim, self.kind, self.seed = dim, projection, seed
        self.projection = make_projection(projection, self.full_dim, dim - n_lambda, seed)
        model.requires_grad_(False)
        self.theta_d = nn.Parameter(torch.zeros(dim - n_lambda))
        self.said_lambda = nn.Parameter(torch.ones(n_lambda)) if said else None
        self.derived = DerivedCache()  # θ for evaluation, kept inside `loralab.frozen`

    def parameters_now(self) -> dict[str, torch.Tensor]:
        """θ for every moving tensor: θ0 + λ·(P·θ_d) reshaped, by parameter name."""
        params = dict(self.model.named_parameters())
        theta0 = [params[name] for name in self.names]
        theta = _Assemble.apply(self.theta_d, self.said_lambda, self.projection, theta0, self.sizes)
        return dict(zip(self.names, theta))

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return functional_call(self.model, self.parameters_now(), args, kwargs)
        params = dict(self.model.named_parameters())
        sources = (*(p for _, p in self.trainable()), *(params[n] for n in self.names))  # θ_d, λ, θ0
        theta = self.derived.get("theta", sources, lambda: {n: t.detach() for n, t in self.parameters_now().items()})
        return functional_call(self.model, theta, args, kwargs)  # θ built once per `frozen` block

    @torch.no_grad()
    def merge_into_model(self) -> nn.Module:
        """Write θ into the wrapped model's own parameters and return that (plain) model."""
        params = dict(self.model.named_parameters())
        for name, value in self.parameters_now().items():
            params[name].copy_(value)
        return self.model

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        params = [("theta_d", self.theta_d)]
        if self.said_lambda is not None:
            params.append(("said_lambda", self.said_lambda))
        return params

    def save(self, directory: Union[str, Path], extra_theta0: Optional[list[str]] = None) -> Path:
        """θ_d, λ and what rebuilds P (kind, D, seed, tensor names) as safetensors + JSON.

        ``extra_theta0`` names tensors whose θ0 is not in the base checkpoint (a new head).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().clone() for k, v in self.trainable()}
        params = dict(self.model.named_parameters())
        for name in extra_theta0 or []:
            tensors[f"theta0.{name}"] = params[name].detach().clone()
        atomic_save_tensors(out / "intrinsic.safetensors", tensors)
        meta = {"dim": self.dim, "projection": self.kind, "seed": self.seed, "said": self.said,
                "full_dim": self.full_dim, "names": self.names}
        atomic_write_text(out / "intrinsic.json", json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, model: nn.Module, directory: Union[str, Path]) -> "IntrinsicModel":
        """Rebuild a saved subspace model on the same base ``model``."""
        root = Path(directory)
        meta = json.loads((root / "intrinsic.json").read_text())
        tensors = load_file(str(root / "intrinsic.safetensors"))
        with torch.no_grad():
            params = dict(model.named_parameters())
            for key, value in tensors.items():
                if key.startswith("theta0."):
                    params[key[len("theta0."):]].copy_(value)
        wrapped = cls(model, meta["dim"], meta["projection"], meta["said"], targets=meta["names"], seed=meta["seed"])
        with torch.no_grad():
            wrapped.theta_d.copy_(tensors["theta_d"])
            if wrapped.said_lambda is not None:
                wrapped.said_lambda.copy_(tensors["said_lambda"])
        return wrapped

