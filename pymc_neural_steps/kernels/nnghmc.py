"""NNgHMC's transitions: HMC that records training pairs and finds U-turns, and the paired test.

Li, Holbrook, Shahbaba & Baldi, "Neural network gradient Hamiltonian Monte Carlo" (2019),
``algorithms.md`` §1. Three pieces, all pure JAX and independent of PyMC:

* ``GradientBuffer`` -- a fixed-size ring buffer of training pairs (x, ∇ℓ(x)), where ℓ is
  the part of the log density the network learns (likelihood and potentials; the prior's
  gradient is added exactly). Fixed shapes and a traced count, so it lives in a jitted carry.
* ``build_kernel`` -- one HMC transition on any field, with two warm-up extras: every
  leapfrog step up to the proposal can be *recorded* (the paper's training data: the pairs
  along every trajectory, rejected ones included), and the trajectory can be *continued past the
  proposal* until its first U-turn, (x_t − x_0)·M⁻¹p_t < 0 (Hoffman & Gelman 2014, eq. 9),
  to learn how long trajectories should be. The continuation never changes the proposal:
  the MH test is on the state after exactly ``num_steps`` steps, as in ``kernels/hmc.py``.
* ``paired_acceptance`` -- from one start and one momentum, the acceptance probability of
  the trajectory on the true gradient and of the same trajectory on the surrogate, both
  with the true Hamiltonian: the paper's criterion "switch once the surrogate's acceptance
  is close to that of HMC" (§3) measured on common random numbers.

A field here is ``field(x) -> (value, gradient, aux)``: ``value`` is the true log density
when the field is exact (true gradients come with it) and ignored otherwise; ``aux`` is what
gets recorded (the learned part's gradient). Exactness needs nothing of the field beyond
being a deterministic function of x (``kernels/hmc.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pymc_neural_steps.kernels.hmc import (
    DIVERGENCE_THRESHOLD,
    HMCParams,
    HMCState,
    kinetic_energy,
    leapfrog,
    mh_accept,
    sample_momentum,
)

__all__ = [
    "GradientBuffer",
    "NNgHMCInfo",
    "buffer_init",
    "buffer_push",
    "build_kernel",
    "paired_acceptance",
]

Field = Callable[[jax.Array], tuple[jax.Array, jax.Array, Any]]


class GradientBuffer(NamedTuple):
    """The last ``capacity`` training pairs; slot ``count % capacity`` is written next."""

    positions: jax.Array  # (capacity, d)
    gradients: jax.Array  # (capacity, d)
    count: jax.Array  # pairs written so far (int); min(count, capacity) slots are valid


def buffer_init(capacity: int, dim: int) -> GradientBuffer:
    zeros = jnp.zeros((capacity, dim), jnp.float64)
    return GradientBuffer(zeros, zeros, jnp.zeros((), jnp.int64))


def buffer_push(buffer: GradientBuffer, position, gradient, keep) -> GradientBuffer:
    """Write one pair if ``keep`` (a traced bool); otherwise leave the buffer as it was."""
    slot = buffer.count % buffer.positions.shape[0]
    positions = buffer.positions.at[slot].set(
        jnp.where(keep, position, buffer.positions[slot])
    )
    gradients = buffer.gradients.at[slot].set(
        jnp.where(keep, gradient, buffer.gradients[slot])
    )
    return GradientBuffer(positions, gradients, buffer.count + keep.astype(jnp.int64))


class NNgHMCInfo(NamedTuple):
    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    energy: jax.Array
    energy_error: jax.Array
    num_steps: jax.Array  # leapfrog steps to the proposal
    num_integrated: jax.Array  # steps actually integrated (>= num_steps when continued)
    uturn_steps: jax.Array  # step of the first U-turn, 0 when none was seen
    is_nonfinite: jax.Array  # the field (or the density) gave NaN/inf: proposal rejected
    n_grad_evals: jax.Array
    n_field_evals: jax.Array
    n_logp_evals: jax.Array  # log densities without gradient (the surrogate's MH test)


class _Trajectory(NamedTuple):
    i: jax.Array
    x: jax.Array
    p: jax.Array
    g: jax.Array
    value: jax.Array
    proposal: tuple
    turned: jax.Array
    uturn_steps: jax.Array
    stopped: jax.Array
    record_state: Any


def build_kernel(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    field: Field,
    *,
    exact: bool,
    find_uturn: bool = False,
    max_steps: int = 1024,
    record: Callable | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
):
    """An HMC transition on ``field`` with the MH test on the true log density.

    Parameters
    ----------
    logdensity_fn
        The true log density (evaluated once, at the proposal, when ``exact`` is False).
    field
        ``x -> (value, ∇log p(x) or a surrogate of it, aux)``.
    exact
        Whether ``field`` is the true gradient (its ``value`` is then the log density, and
        its evaluations are counted as gradients, not as surrogate evaluations).
    find_uturn
        Continue the trajectory past ``num_steps`` until its first U-turn (or a divergence,
        or ``max_steps``) and report the step. Costs field evaluations, never the proposal.
    record
        ``record(record_state, x, aux, ok) -> record_state``, called after every step; ``ok``
        is False past the proposal (the U-turn continuation) and once the trajectory has
        become non-finite or divergent.

    Returns ``kernel(key, state, params, record_state=None, continue_to_uturn=True) ->
    (state, info, record_state)``; ``continue_to_uturn`` (traced) switches the continuation
    of ``find_uturn`` off for this transition, which then reports no U-turn.
    """

    def kernel(key, state: HMCState, params: HMCParams, record_state=None, continue_to_uturn=True):
        key_momentum, key_accept = jax.random.split(key)
        eps, inverse_mass = params.step_size, params.inverse_mass
        num_steps = jnp.asarray(params.num_steps, jnp.int64)
        momentum = sample_momentum(key_momentum, inverse_mass)
        energy_start = -state.logdensity + kinetic_energy(momentum, inverse_mass)
        x0 = state.position

        def keep_going(t: _Trajectory):
            go = t.i < num_steps
            if find_uturn:
                go = go | (continue_to_uturn & (t.i < max_steps) & ~t.turned & ~t.stopped)
            return go

        def one_step(t: _Trajectory) -> _Trajectory:
            p = t.p + 0.5 * eps * t.g
            x = t.x + eps * inverse_mass * p
            value, g, aux = field(x)
            p = p + 0.5 * eps * g
            i = t.i + 1
            finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(p)) & jnp.all(jnp.isfinite(g))
            if exact:
                error = -value + kinetic_energy(p, inverse_mass) - energy_start
                finite = finite & ~jnp.isnan(error) & (error < divergence_threshold)
            stopped = t.stopped | ~finite
            record_state = t.record_state
            if record is not None:
                # Only the proposal's own trajectory: the continuation to the U-turn can run
                # far into the tails (e.g. along a funnel's flat direction), and pairs from
                # there would dominate the standardisation of the training data.
                record_state = record(record_state, x, aux, ~stopped & (i <= num_steps))
            crossed = ~t.turned & ~stopped & (jnp.dot(x - x0, inverse_mass * p) < 0)
            proposal = jax.tree.map(
                lambda new, old: jnp.where(i == num_steps, new, old), (x, p, g, value), t.proposal
            )
            return _Trajectory(
                i=i,
                x=x,
                p=p,
                g=g,
                value=value,
                proposal=proposal,
                turned=t.turned | crossed,
                uturn_steps=jnp.where(crossed, i, t.uturn_steps),
                stopped=stopped,
                record_state=record_state,
            )

        start = (x0, momentum, state.gradient, state.logdensity)
        false = jnp.zeros((), bool)
        zero = jnp.zeros((), jnp.int64)
        trajectory = jax.lax.while_loop(
            keep_going,
            one_step,
            _Trajectory(zero, *start, start, false, zero, false, record_state),
        )
        new_state, info = _metropolis_hastings(
            key_accept, state, trajectory, energy_start, inverse_mass, num_steps,
            logdensity_fn=None if exact else logdensity_fn,
            divergence_threshold=divergence_threshold,
            reports_uturn=continue_to_uturn,
        )
        return new_state, info, trajectory.record_state

    return kernel


def _metropolis_hastings(
    key, state: HMCState, trajectory: _Trajectory, energy_start, inverse_mass, num_steps, *,
    logdensity_fn, divergence_threshold, reports_uturn,
) -> tuple[HMCState, NNgHMCInfo]:
    """The MH test of a finished trajectory's proposal against the true Hamiltonian.

    ``logdensity_fn`` is None when the field was the true gradient (the proposal's log
    density is then already known); otherwise it is evaluated once, at the proposal."""
    exact = logdensity_fn is None
    zero = jnp.zeros((), jnp.int64)
    x, p, g, logdensity = trajectory.proposal
    if not exact:
        logdensity = logdensity_fn(x)
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(p))
    logdensity = jnp.where(finite & ~jnp.isnan(logdensity), logdensity, -jnp.inf)

    energy_proposal = -logdensity + kinetic_energy(p, inverse_mass)
    energy_error = energy_proposal - energy_start
    energy_error = jnp.where(jnp.isnan(energy_error), jnp.inf, energy_error)
    accepted, acceptance_rate = mh_accept(key, -energy_error)
    new_state = jax.tree.map(
        lambda new, old: jnp.where(accepted, new, old), HMCState(x, logdensity, g), state
    )
    integrated = trajectory.i
    info = NNgHMCInfo(
        acceptance_rate=acceptance_rate,
        is_accepted=accepted,
        is_divergent=energy_error > divergence_threshold,
        energy=jnp.where(accepted, energy_proposal, energy_start),
        energy_error=energy_error,
        num_steps=num_steps,
        num_integrated=integrated,
        # A U-turn seen before the proposal without continuing would be a censored
        # sample (only short ones are seen): none is reported.
        uturn_steps=jnp.where(reports_uturn, trajectory.uturn_steps, 0),
        is_nonfinite=~finite,
        n_grad_evals=integrated if exact else zero,
        n_field_evals=zero if exact else integrated,
        n_logp_evals=zero if exact else jnp.ones((), jnp.int64),
    )
    return new_state, info


def _acceptance(log_ratio: jax.Array) -> jax.Array:
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    return jnp.exp(jnp.minimum(log_ratio, 0.0))


def paired_acceptance(
    key: jax.Array,
    position: jax.Array,
    params: HMCParams,
    true_field: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    surrogate_field: Callable[[jax.Array], jax.Array],
    logdensity_fn: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """MH acceptance probabilities (true field, surrogate field) of one trajectory pair.

    Same start, same momentum, same ε, M and number of steps; both judged by the true
    Hamiltonian. Costs ``num_steps + 1`` true gradients and ``num_steps + 1`` surrogate
    evaluations plus one log density.
    """
    momentum = sample_momentum(key, params.inverse_mass)
    kinetic = kinetic_energy(momentum, params.inverse_mass)
    value0, gradient0 = true_field(position)
    energy0 = -value0 + kinetic

    def acceptance(x, p, g, value):
        finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(p)) & jnp.all(jnp.isfinite(g))
        value = jnp.where(finite & ~jnp.isnan(value), value, -jnp.inf)
        return _acceptance(energy0 - (-value + kinetic_energy(p, params.inverse_mass)))

    steps = (params.step_size, params.inverse_mass, params.num_steps)
    x, p, g, value = leapfrog(true_field, position, momentum, gradient0, *steps, value0)
    accept_true = acceptance(x, p, g, value)

    def surrogate(x):
        return jnp.zeros((), x.dtype), surrogate_field(x)

    x, p, g, _ = leapfrog(surrogate, position, momentum, surrogate_field(position), *steps)
    accept_surrogate = acceptance(x, p, g, logdensity_fn(x))
    return accept_true, accept_surrogate
