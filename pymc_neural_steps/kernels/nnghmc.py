"""NNgHMC's transitions: HMC that records training pairs and finds U-turns, and the paired test.

Li, Holbrook, Shahbaba & Baldi, "Neural network gradient Hamiltonian Monte Carlo" (2019),
``algorithms.md`` §1. Three pieces, all pure JAX and independent of PyMC:

* ``GradientBuffer`` -- a fixed-size ring buffer of training pairs (x, ∇ℓ(x)), where ℓ is
  the part of the log density the network learns (likelihood and potentials; the prior's
  gradient is added exactly). Fixed shapes and a traced count, so it lives in a jitted carry.
* ``build_kernel`` -- one HMC transition on any field, with two warm-up extras: the
  leapfrog steps up to the proposal can be *recorded* (the paper's training data: pairs
  along every trajectory, rejected ones included; at most ``RECORDS_PER_TRAJECTORY`` of
  them, evenly spaced), and the trajectory can be *continued past the
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
    "RECORDS_PER_TRAJECTORY",
    "GradientBuffer",
    "NNgHMCInfo",
    "buffer_init",
    "buffer_push",
    "buffer_push_many",
    "build_kernel",
    "paired_acceptance",
]

Field = Callable[[jax.Array], tuple[jax.Array, jax.Array, Any]]

# Pairs recorded per trajectory, evenly spaced along it (every step of a shorter one).
# Successive leapfrog pairs are nearly copies of each other; a long trajectory (hundreds
# of steps on a posterior a diagonal mass matrix cannot whiten) would otherwise fill the
# buffer with a handful of trajectories. And the sample is small enough to carry through
# the leapfrog loop: carrying the whole buffer made every step of a vmapped chain copy it
# (NNgHMC's warm-up 30x slower per gradient than JaxHMC's on the calendar-year regression).
RECORDS_PER_TRAJECTORY = 16


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


def buffer_push_many(buffer: GradientBuffer, positions, gradients, n) -> GradientBuffer:
    """Write the first ``n`` (traced) rows of ``positions`` / ``gradients`` (k, d), in order,
    as ``buffer_push`` would one by one; k must not exceed the capacity."""
    capacity, k = buffer.positions.shape[0], positions.shape[0]
    slots = (buffer.count + jnp.arange(k)) % capacity
    keep = (jnp.arange(k) < n)[:, None]
    new_positions = jnp.where(keep, positions, buffer.positions[slots])
    new_gradients = jnp.where(keep, gradients, buffer.gradients[slots])
    return GradientBuffer(
        buffer.positions.at[slots].set(new_positions),
        buffer.gradients.at[slots].set(new_gradients),
        buffer.count + jnp.asarray(n, jnp.int64),
    )


class _Recorded(NamedTuple):
    """The pairs one trajectory records (carried through its leapfrog loop)."""

    positions: jax.Array  # (k, d)
    aux: Any  # what the field records, each leaf with a leading k axis
    count: jax.Array


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
    recorded: Any  # _Recorded, or None when nothing is recorded


def build_kernel(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    field: Field,
    *,
    exact: bool,
    find_uturn: bool = False,
    max_steps: int = 1024,
    record: Callable | None = None,
    records: int = RECORDS_PER_TRAJECTORY,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
):
    """An HMC transition on ``field`` with the MH test on the true log density.

    ``field(x) -> (value, ∇log p(x) or a surrogate of it, aux)``; ``logdensity_fn``, the
    true log density, is evaluated once, at the proposal, unless ``exact`` (then ``field``'s
    value is it, and its evaluations count as gradients). ``find_uturn``: continue past
    ``num_steps`` to the first U-turn (or a divergence, or ``max_steps``) and report its
    step; it costs field evaluations and never changes the proposal. ``record(record_state,
    positions, aux, n) -> record_state`` is called once per transition with the first ``n``
    of ``records`` rows its trajectory recorded (leaves of ``aux`` with the same leading
    axis): steps s, 2s, ..., s = ceil(num_steps / records), never past the proposal nor
    once the trajectory has become non-finite or divergent.

    Returns ``kernel(key, state, params, record_state=None, continue_to_uturn=True) ->
    (state, info, record_state)``; ``continue_to_uturn`` (traced) switches the continuation
    off for this transition, which then reports no U-turn.
    """

    def kernel(key, state: HMCState, params: HMCParams, record_state=None, continue_to_uturn=True):
        key_momentum, key_accept = jax.random.split(key)
        eps, inverse_mass = params.step_size, params.inverse_mass
        num_steps = jnp.asarray(params.num_steps, jnp.int64)
        momentum = sample_momentum(key_momentum, inverse_mass)
        energy_start = -state.logdensity + kinetic_energy(momentum, inverse_mass)
        x0 = state.position
        stride = jnp.maximum(1, -(-num_steps // records))

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
            recorded = t.recorded
            if record is not None:
                # Only the proposal's own trajectory: the continuation to the U-turn can run
                # far into the tails (e.g. along a funnel's flat direction), and pairs from
                # there would dominate the standardisation of the training data.
                take = ~stopped & (i <= num_steps) & (i % stride == 0) & (t.recorded.count < records)
                recorded = _take(t.recorded, x, aux, take)
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
                recorded=recorded,
            )

        start = (x0, momentum, state.gradient, state.logdensity)
        false = jnp.zeros((), bool)
        zero = jnp.zeros((), jnp.int64)
        recorded = None if record is None else _nothing_recorded(field, x0, records)
        trajectory = jax.lax.while_loop(
            keep_going,
            one_step,
            _Trajectory(zero, *start, start, false, zero, false, recorded),
        )
        if record is not None:
            kept = trajectory.recorded
            record_state = record(record_state, kept.positions, kept.aux, kept.count)
        new_state, info = _metropolis_hastings(
            key_accept, state, trajectory, energy_start, inverse_mass, num_steps,
            logdensity_fn=None if exact else logdensity_fn,
            divergence_threshold=divergence_threshold,
            reports_uturn=continue_to_uturn,
        )
        return new_state, info, record_state

    return kernel


def _nothing_recorded(field: Field, x0, records: int) -> _Recorded:
    """An empty sample of ``records`` rows shaped like ``field``'s positions and aux."""
    aux = jax.eval_shape(field, x0)[2]
    return _Recorded(
        jnp.zeros((records, *x0.shape), x0.dtype),
        jax.tree.map(lambda a: jnp.zeros((records, *a.shape), a.dtype), aux),
        jnp.zeros((), jnp.int64),
    )


def _take(recorded: _Recorded, x, aux, take) -> _Recorded:
    """``recorded`` with (x, aux) in its next row if ``take`` (traced)."""
    row = jnp.minimum(recorded.count, recorded.positions.shape[0] - 1)

    def put(rows, value):
        return rows.at[row].set(jnp.where(take, value, rows[row]))

    return _Recorded(
        put(recorded.positions, x),
        jax.tree.map(put, recorded.aux, aux),
        recorded.count + take.astype(jnp.int64),
    )


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
