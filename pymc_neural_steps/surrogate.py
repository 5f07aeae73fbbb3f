"""NNgHMC's gradient surrogate: a network for the gradient of the log likelihood.

Li, Holbrook, Shahbaba & Baldi (2019), ``algorithms.md`` §1. The paper's network predicts
the whole gradient ∇U; here it predicts only the part that is expensive and that a prior
swap does not touch, ℓ(x) = log likelihood + log potentials. The prior's gradient (with
the transforms' Jacobian terms) is computed exactly and added:

    g(x) = ∇log prior(x) + ĝ_ℓ(x),   ĝ_ℓ(x) = μ_g + σ_g ⊙ net((x − μ_x) / σ_x)

so a model that differs only in its priors gets the exact gradient of its own prior with the
same network (the paper's §4.2 correction, exact by construction). Inputs and outputs are
standardised per coordinate with the training data's mean and sd (``training.py`` sets
them), so the network sees O(1) numbers whatever the scales of the model.

Architecture (paper §3 and §5.3): one hidden layer of softplus units (the paper uses 50-100
units; default 100) mapping x to ĝ_ℓ(x). Above ``BLOCK_THRESHOLD`` = 50 dimensions the network
is the paper's block network instead: disjoint sub-networks (``nets.BlockMLP``), each with
its own hidden layer, each predicting ``BLOCK_SIZE`` = 25 gradient coordinates from all of x.
Why 50: a one-hidden-layer network with w units maps x to the gradient through a
w-dimensional bottleneck, and even a Gaussian posterior's gradient, −H(x − m), has rank d;
with w = 100 a single network has two hidden units per output at d = 50 and cannot keep up
beyond. Blocks give each group of 25 outputs its own 100 units (rank 25 ≤ 100) at a cost
linear in d per block.

This lives in its own module rather than in ``nets.py`` because it is not a generic network
but NNgHMC's model of one specific function (standardisation included), and ``io.py`` needs
to rebuild it from a small JSON spec (``SurrogateSpec``).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from pymc_neural_steps.nets import ACTIVATIONS, BlockMLP, mlp

__all__ = [
    "BLOCK_SIZE",
    "BLOCK_THRESHOLD",
    "GradientSurrogate",
    "SurrogateSpec",
    "default_spec",
    "make_surrogate",
]

BLOCK_THRESHOLD = 50
BLOCK_SIZE = 25
DEFAULT_WIDTH = 100


class SurrogateSpec(NamedTuple):
    """Everything needed to rebuild a surrogate's structure (saved as JSON by ``io.py``)."""

    dim: int
    width: int = DEFAULT_WIDTH
    depth: int = 1
    activation: str = "softplus"
    block_size: int = 0  # 0: one network for all coordinates; else a block network

    def to_json(self) -> dict:
        return dict(self._asdict())

    @classmethod
    def from_json(cls, data: dict) -> SurrogateSpec:
        unknown = set(data) - set(cls._fields)
        if unknown:
            raise ValueError(f"unknown surrogate settings {sorted(unknown)}")
        return cls(**{k: (str(v) if k == "activation" else int(v)) for k, v in data.items()})


def default_spec(
    dim: int,
    *,
    width: int = DEFAULT_WIDTH,
    depth: int = 1,
    activation: str = "softplus",
    block_size: int | None = None,
    block_threshold: int = BLOCK_THRESHOLD,
) -> SurrogateSpec:
    """The paper's architecture for dimension ``dim``: one network, or blocks above 50."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got {width}, {depth}")
    if block_size is None:
        block_size = BLOCK_SIZE if dim > block_threshold else 0
    if block_size < 0:
        raise ValueError(f"block_size must be >= 0, got {block_size}")
    if block_size >= dim:
        block_size = 0
    return SurrogateSpec(int(dim), int(width), int(depth), activation, int(block_size))


class GradientSurrogate(eqx.Module):
    """x ↦ ĝ_ℓ(x), the predicted gradient of log likelihood + log potentials."""

    net: eqx.Module
    x_mean: jax.Array
    x_scale: jax.Array
    g_mean: jax.Array
    g_scale: jax.Array
    spec: SurrogateSpec = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        z = (x - self.x_mean) / self.x_scale
        return self.g_mean + self.g_scale * self.net(z)

    def standardised(self, x: jax.Array) -> jax.Array:
        """The network's own output (the standardised gradient), for training."""
        return self.net((x - self.x_mean) / self.x_scale)


def make_surrogate(spec: SurrogateSpec, key: jax.Array) -> GradientSurrogate:
    """A freshly initialised surrogate with identity standardisation."""
    if spec.block_size:
        net = BlockMLP(
            spec.dim,
            spec.dim,
            spec.block_size,
            spec.width,
            spec.depth,
            key=key,
            activation=spec.activation,
            zero_output=False,
        )
    else:
        net = mlp(
            spec.dim,
            spec.dim,
            spec.width,
            spec.depth,
            key=key,
            activation=spec.activation,
            zero_output=False,
        )
    zeros, ones = jnp.zeros(spec.dim, jnp.float64), jnp.ones(spec.dim, jnp.float64)
    return GradientSurrogate(net, zeros, ones, zeros, ones, spec)
