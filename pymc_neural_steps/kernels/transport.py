"""Neural transport HMC: HMC in the latent space of a learned bijection (NeuTra).

Source: M. Hoffman, P. Sountsov, J. V. Dillon, I. Langmore, D. Tran, S. Vasudevan,
"NeuTra-lizing Bad Geometry in Hamiltonian Monte Carlo Using Neural Transport" (2019).
A bijection x = T(z) is fitted so that the pull-back of the posterior,

    π_z(z) = p(T(z)) · |det ∂T/∂z|,

is close to N(0, I) (``reverse_kl``: the negative ELBO of the flow as a variational
family, estimated from base draws z ~ N(0, I); it needs the gradient of log p, never
posterior draws). HMC on π_z with a unit mass matrix then mixes where HMC on p cannot: a
funnel's neck, pulled back through a map whose scale follows the funnel, is a Gaussian.

Exactness does not depend on what was learned: T is a bijection, HMC leaves π_z invariant,
so x = T(z) is distributed as p. The chain's state is x (with log p(x) and ∇log p(x));
each transition maps it to z = T⁻¹(x), runs the leapfrog on log π_z with the MH test on its
Hamiltonian, and maps the result back (``build_kernel``). The gradient of log π_z at the
start comes from the stored ∇log p(x) by one reverse pass through T (no true gradient), so
a transition of L leapfrog steps costs L true gradients, as HMC's does.

T is the fixed whitening x = c + s ⊙ u (the HMC warm-up's centre and standard deviations)
after a learned elementwise affine map and affine coupling layers (RealNVP),

    u_B = z_B · exp(σ(a(z_A))) + b(z_A),   u_A = z_A,

A = the layer's mask, B the rest, a and b an MLP plus a linear map (both starting at zero,
so the untrained T is the whitening and the kernel is HMC with the warm-up's diagonal mass
matrix), σ a soft clamp of the log scale (σ(a) = m tanh(a / m)). The masks are the binary
digits of the coordinate index, each with its complement (``coupling_masks``): for any two
coordinates i ≠ j some layer conditions i on j, so a scale of x_i that depends on x_j (the
funnel's) is representable whichever coordinates they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import nets
from pymc_neural_steps.kernels import hmc

__all__ = [
    "MAX_LOG_SCALE",
    "ROUND_TRIP_TOLERANCE",
    "Coupling",
    "TransportMap",
    "Whitening",
    "build_kernel",
    "coupling_masks",
    "forward",
    "init_map",
    "inverse",
    "invertible",
    "latent_logdensity",
    "reverse_kl",
]

# Bound on each coupling layer's log scale (soft clamp): e^±6 per layer, composed over the
# layers; keeps one bad network output from overflowing the map.
MAX_LOG_SCALE = 12.0
# Largest round-trip error |T⁻¹(T(z)) − z| (relative to 1 + |z|) a proposal may have.
ROUND_TRIP_TOLERANCE = 1e-8


class Whitening(NamedTuple):
    """The fixed affine part x = center + scale ⊙ u (diagonal)."""

    center: jax.Array
    scale: jax.Array


class Coupling(eqx.Module):
    """One affine coupling layer: the coordinates outside ``mask`` are scaled and shifted
    by functions of those inside it."""

    mask: jax.Array  # bool (d,): the conditioning coordinates (passed through)
    layers: tuple[eqx.nn.Linear, ...]  # an MLP d -> 2d: (log scale, shift), last at zero
    linear: eqx.nn.Linear  # d -> 2d, at zero: the affine part of the same functions
    activation: str = eqx.field(static=True)

    def coefficients(self, conditioning):
        h = jnp.where(self.mask, conditioning, 0.0)
        hidden = h
        for layer in self.layers[:-1]:
            hidden = nets.ACTIVATIONS[self.activation](layer(hidden))
        out = self.layers[-1](hidden) + self.linear(h)
        raw, shift = jnp.split(out, 2)
        log_scale = MAX_LOG_SCALE * jnp.tanh(raw / MAX_LOG_SCALE)
        return jnp.where(self.mask, 0.0, log_scale), jnp.where(self.mask, 0.0, shift)


class TransportMap(eqx.Module):
    """The learned part of T: elementwise affine, then the couplings; and the latent
    HMC's log step size (adapted in training, a leaf so that it travels with the map)."""

    log_scale: jax.Array  # (d,)
    shift: jax.Array  # (d,)
    couplings: tuple[Coupling, ...]
    log_step_size: jax.Array

    @property
    def dim(self) -> int:
        return int(self.shift.shape[-1])


def coupling_masks(dim: int) -> np.ndarray:
    """(2·⌈log₂ d⌉, d) boolean masks: bit b of the index, and its complement, for every b.
    Two different indices differ in some bit, so one of that bit's two layers conditions
    either coordinate on the other. None for d = 1 (nothing to couple)."""
    if dim < 2:
        return np.zeros((0, dim), bool)
    bits = math.ceil(math.log2(dim))
    index = np.arange(dim)
    masks = []
    for b in range(bits):
        m = ((index >> b) & 1) == 1
        masks += [m, ~m]
    return np.array(masks)


def init_map(key, dim: int, width: int = 64, depth: int = 1, *, step_size: float = 1.0,
             activation: str = "tanh") -> TransportMap:
    """The untrained map (the identity): every output at zero."""
    couplings = []
    for i, mask in enumerate(coupling_masks(dim)):
        k_net, k_lin = jax.random.split(jax.random.fold_in(key, i))
        net = nets.mlp(dim, 2 * dim, width, depth, key=k_net, activation=activation)
        linear = eqx.nn.Linear(dim, 2 * dim, key=k_lin, dtype=jnp.float64)
        linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear,
                             (jnp.zeros_like(linear.weight), jnp.zeros_like(linear.bias)))
        couplings.append(Coupling(jnp.asarray(mask), tuple(net.layers), linear, activation))
    zero = jnp.zeros(dim)
    return TransportMap(zero, zero, tuple(couplings), jnp.log(jnp.asarray(step_size, float)))


def forward(flow: TransportMap, whitening: Whitening, z):
    """x = T(z) and log|det ∂T/∂z|."""
    u = z * jnp.exp(flow.log_scale) + flow.shift
    log_det = jnp.sum(flow.log_scale)
    for layer in flow.couplings:
        log_scale, shift = layer.coefficients(u)
        u = u * jnp.exp(log_scale) + shift
        log_det = log_det + jnp.sum(log_scale)
    x = whitening.center + whitening.scale * u
    return x, log_det + jnp.sum(jnp.log(whitening.scale))


def inverse(flow: TransportMap, whitening: Whitening, x):
    """z = T⁻¹(x) (the layers undone in reverse order)."""
    u = (x - whitening.center) / whitening.scale
    for layer in reversed(flow.couplings):
        log_scale, shift = layer.coefficients(u)  # the conditioning part is unchanged
        u = (u - shift) * jnp.exp(-log_scale)
    return (u - flow.shift) * jnp.exp(-flow.log_scale)


def latent_logdensity(logdensity_fn: Callable, flow: TransportMap, whitening: Whitening):
    """log π_z(z) = log p(T(z)) + log|det ∂T/∂z|."""

    def fn(z):
        x, log_det = forward(flow, whitening, z)
        return logdensity_fn(x) + log_det

    return fn


def reverse_kl(flow: TransportMap, key, num_draws: int, logdensity_fn, whitening: Whitening):
    """KL(q_T ‖ p) up to log p's normaliser, from ``num_draws`` base draws: the mean of
    −log π_z(z) over z ~ N(0, I) (the constant entropy of N(0, I) left out). Draws where
    log p is not finite (outside the support, overflow) are left out of the mean.
    Returns (loss, number of draws kept)."""
    z = jax.random.normal(key, (num_draws, flow.dim))
    values = jax.vmap(latent_logdensity(logdensity_fn, flow, whitening))(z)
    finite = jnp.isfinite(values)
    kept = jnp.sum(finite)
    loss = -jnp.sum(jnp.where(finite, values, 0.0)) / jnp.maximum(kept, 1)
    return jnp.where(kept > 0, loss, jnp.nan), kept


def _latent_field(logdensity_fn, flow, whitening):
    """z -> ((log π_z, x, log p(x), ∇log p(x)), ∇log π_z): one true gradient, one pass of
    T forward and back."""

    def field(z):
        (x, log_det), pullback = jax.vjp(lambda z: forward(flow, whitening, z), z)
        logp, grad_x = jax.value_and_grad(logdensity_fn)(x)
        (grad_z,) = pullback((grad_x, jnp.ones_like(log_det)))
        return (logp + log_det, x, logp, grad_x), grad_z

    return field


def invertible(flow: TransportMap, whitening: Whitening, z, x) -> jax.Array:
    """Whether T⁻¹(x) gives z back to ``ROUND_TRIP_TOLERANCE`` (latent units). A map whose
    scales compose to extremes loses precision in its inverse; a proposal there is
    rejected, so that the chain on x stays the image of the chain on z."""
    error = jnp.max(jnp.abs(inverse(flow, whitening, x) - z))
    return error <= ROUND_TRIP_TOLERANCE * (1.0 + jnp.max(jnp.abs(z)))


def build_kernel(logdensity_fn: Callable, divergence_threshold: float = hmc.DIVERGENCE_THRESHOLD):
    """One transition of HMC on π_z, on a state in model coordinates (``hmc.HMCState``:
    x, log p(x), ∇log p(x)). ``kernel(key, state, flow, whitening, num_steps)``; the step
    size is ``exp(flow.log_step_size)``, the mass matrix the identity."""

    def kernel(key, state: hmc.HMCState, flow: TransportMap, whitening: Whitening, num_steps):
        key_momentum, key_accept = jax.random.split(key)
        field = _latent_field(logdensity_fn, flow, whitening)
        z = inverse(flow, whitening, state.position)
        (_, log_det), pullback = jax.vjp(lambda z: forward(flow, whitening, z), z)
        (grad_z,) = pullback((state.gradient, jnp.ones_like(log_det)))
        start = (state.logdensity + log_det, state.position, state.logdensity, state.gradient)
        unit = jnp.ones_like(z)
        momentum = hmc.sample_momentum(key_momentum, unit)
        num_steps = jnp.asarray(num_steps, jnp.int64)
        step_size = jnp.exp(flow.log_step_size)
        z1, p1, g1, (latent1, x1, logp1, grad_x1) = hmc.leapfrog(
            field, z, momentum, grad_z, step_size, unit, num_steps, start
        )
        finite = (jnp.all(jnp.isfinite(z1)) & jnp.all(jnp.isfinite(g1))
                  & jnp.all(jnp.isfinite(p1)) & jnp.all(jnp.isfinite(x1))
                  & invertible(flow, whitening, z1, x1))
        latent1 = jnp.where(finite & ~jnp.isnan(latent1), latent1, -jnp.inf)
        energy_start = -start[0] + hmc.kinetic_energy(momentum, unit)
        energy_proposal = -latent1 + hmc.kinetic_energy(p1, unit)
        energy_error = energy_proposal - energy_start
        energy_error = jnp.where(jnp.isnan(energy_error), jnp.inf, energy_error)
        accepted, acceptance_rate = hmc.mh_accept(key_accept, -energy_error)
        new_state = jax.tree.map(
            lambda new, old: jnp.where(accepted, new, old),
            hmc.HMCState(x1, logp1, grad_x1),
            state,
        )
        zero = jnp.zeros((), jnp.int64)
        info = hmc.HMCInfo(
            acceptance_rate=acceptance_rate,
            is_accepted=accepted,
            is_divergent=energy_error > divergence_threshold,
            energy=jnp.where(accepted, energy_proposal, energy_start),
            energy_error=energy_error,
            num_steps=num_steps,
            n_grad_evals=num_steps,
            n_field_evals=zero,
            n_logp_evals=zero,
        )
        return new_state, info

    return kernel
