"""Hamiltonian Monte Carlo with a pluggable gradient field and an exact MH test.

The leapfrog integrator (``leapfrog``) takes the vector field it integrates as an argument:
the true gradient of the log density for plain HMC, or a learned surrogate for NNgHMC
(Li et al. 2019, ``algorithms.md`` §1). With any field the leapfrog map is volume
preserving and reversible under momentum negation, so the MH test on the *true*
Hamiltonian H(x, p) = -log p(x) + ½ pᵀM⁻¹p (``mh_accept``) leaves p(x) invariant whatever
the field is (paper: Lemma 1, Theorem 1). A bad field costs acceptance, never correctness.

Conventions shared by every kernel in this package (the BlackJAX style):
``init(position, ...) -> State`` and ``kernel(key, state, params) -> (State, Info)``,
``NamedTuple`` states, infos and parameters, no hidden state; ``vmap`` over chains and
``lax.scan`` over draws apply directly. The mass matrix is diagonal and given by its
inverse (the posterior variance estimate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "HMCInfo",
    "HMCParams",
    "HMCState",
    "build_kernel",
    "init",
    "kinetic_energy",
    "leapfrog",
    "mh_accept",
    "sample_momentum",
]

# A transition whose energy error exceeds this is reported as divergent (PyMC's Emax).
DIVERGENCE_THRESHOLD = 1000.0


class HMCState(NamedTuple):
    """Position, its true log density, and the field's value there (reused next step)."""

    position: jax.Array
    logdensity: jax.Array
    gradient: jax.Array


class HMCParams(NamedTuple):
    step_size: jax.Array
    inverse_mass: jax.Array  # diagonal of M⁻¹, shape (d,)
    num_steps: jax.Array  # integer; may differ from draw to draw (jitter)


class HMCInfo(NamedTuple):
    acceptance_rate: jax.Array  # min(1, exp(-ΔH)) of the proposal
    is_accepted: jax.Array
    is_divergent: jax.Array
    energy: jax.Array  # H at the state the chain moves to
    energy_error: jax.Array  # H(proposal) - H(start)
    num_steps: jax.Array
    n_grad_evals: jax.Array  # true gradients (each also yields the log density)
    n_field_evals: jax.Array  # surrogate-field evaluations
    n_logp_evals: jax.Array  # log densities without gradient


GradientField = Callable[[jax.Array], jax.Array]


def init(position: jax.Array, logdensity_fn: Callable, gradient_fn: GradientField | None = None):
    """State at ``position``; with ``gradient_fn`` the carried gradient is the field's."""
    position = jnp.asarray(position)
    if gradient_fn is None:
        logdensity, gradient = jax.value_and_grad(logdensity_fn)(position)
    else:
        logdensity, gradient = logdensity_fn(position), gradient_fn(position)
    return HMCState(position, logdensity, gradient)


def kinetic_energy(momentum: jax.Array, inverse_mass: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(momentum**2 * inverse_mass, axis=-1)


def sample_momentum(key: jax.Array, inverse_mass: jax.Array) -> jax.Array:
    """p ~ N(0, M) with M = diag(1 / inverse_mass)."""
    return jax.random.normal(key, inverse_mass.shape, inverse_mass.dtype) / jnp.sqrt(inverse_mass)


def leapfrog(
    field: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    position: jax.Array,
    momentum: jax.Array,
    gradient: jax.Array,
    step_size: jax.Array,
    inverse_mass: jax.Array,
    num_steps: jax.Array,
    logdensity: jax.Array | None = None,
):
    """``num_steps`` leapfrog steps of the field ``field(x) -> (value, ∇log p(x))``.

    ``value`` is carried along (the true log density when the field is the true gradient,
    anything otherwise). Returns (position, momentum, gradient, value) at the end.
    """
    value0 = jnp.zeros((), position.dtype) if logdensity is None else logdensity

    def one_step(_, carry):
        x, p, g, _value = carry
        p = p + 0.5 * step_size * g
        x = x + step_size * inverse_mass * p
        value, g = field(x)
        p = p + 0.5 * step_size * g
        return x, p, g, value

    return jax.lax.fori_loop(0, num_steps, one_step, (position, momentum, gradient, value0))


def mh_accept(key: jax.Array, log_ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Accept with probability min(1, exp(log_ratio)); NaN counts as -inf (reject)."""
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accepted = jnp.log(jax.random.uniform(key, dtype=log_ratio.dtype)) < log_ratio
    return accepted, acceptance_rate


def build_kernel(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    gradient_fn: GradientField | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
):
    """An HMC transition on ``logdensity_fn``.

    Without ``gradient_fn`` the leapfrog uses the true gradient and each step's log density
    comes with it (``num_steps`` gradient evaluations per draw). With ``gradient_fn`` (a
    surrogate of ∇log p) the leapfrog uses it, and the MH test evaluates the true log
    density once at the proposal: no true gradient at all.
    """
    if gradient_fn is None:
        field = jax.value_and_grad(logdensity_fn)
    else:

        def field(x):
            return jnp.zeros((), x.dtype), gradient_fn(x)

    def kernel(key: jax.Array, state: HMCState, params: HMCParams) -> tuple[HMCState, HMCInfo]:
        key_momentum, key_accept = jax.random.split(key)
        momentum = sample_momentum(key_momentum, params.inverse_mass)
        num_steps = jnp.asarray(params.num_steps, jnp.int64)
        x, p, g, logdensity = leapfrog(
            field,
            state.position,
            momentum,
            state.gradient,
            params.step_size,
            params.inverse_mass,
            num_steps,
            state.logdensity,
        )
        if gradient_fn is not None:
            logdensity = logdensity_fn(x)
        # A field that produced non-finite values must never move the chain.
        finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(p))
        logdensity = jnp.where(finite & ~jnp.isnan(logdensity), logdensity, -jnp.inf)

        energy_start = -state.logdensity + kinetic_energy(momentum, params.inverse_mass)
        energy_proposal = -logdensity + kinetic_energy(p, params.inverse_mass)
        energy_error = energy_proposal - energy_start
        energy_error = jnp.where(jnp.isnan(energy_error), jnp.inf, energy_error)
        accepted, acceptance_rate = mh_accept(key_accept, -energy_error)

        new_state = jax.tree.map(
            lambda new, old: jnp.where(accepted, new, old),
            HMCState(x, logdensity, g),
            state,
        )
        zero = jnp.zeros((), jnp.int64)
        info = HMCInfo(
            acceptance_rate=acceptance_rate,
            is_accepted=accepted,
            is_divergent=energy_error > divergence_threshold,
            energy=jnp.where(accepted, energy_proposal, energy_start),
            energy_error=energy_error,
            num_steps=num_steps,
            n_grad_evals=num_steps if gradient_fn is None else zero,
            n_field_evals=zero if gradient_fn is None else num_steps,
            n_logp_evals=zero if gradient_fn is None else jnp.ones((), jnp.int64),
        )
        return new_state, info

    return kernel
