"""The mixing gate: a learned kernel draws only if it mixes faster, per true gradient,
than the HMC it warmed up with.

When warm-up ends (L2HMC, EntropyFlowMC; NNgHMC at its checks), both kernels run a short
pilot from the same walkers (the training ensemble, close to the posterior by then): the
learned kernel and true-gradient HMC at the warm-up's final step size, mass matrix and
jittered path length. ``mixing.worst_direction`` turns each pilot into ESS per transition
in the slowest direction; divided by the true gradients per transition, that is the score.

The learned kernel is used if its estimate is *resolved* (its autocorrelation died out
within the pilot, so the figure is a measurement, not a bound) and its score beats
HMC's; otherwise the chain draws with the HMC it ran, and tuned on Stan's schedule,
through warm-up (``programs/learned.py``). Acceptance rates play no part: a kernel can
accept most of its moves and still not move.

A learned transition is usually much cheaper than an HMC trajectory, so winning per
gradient can still mean fewer effective draws per draw than HMC gives (an R-hat warning
on the draws a user asked for). A draw of L2HMC or EntropyFlowMC therefore runs
``transitions_per_draw`` learned transitions: as many as fit in the true gradients of one
HMC transition, and no more than the learned kernel's autocorrelation time, beyond which
more transitions add cost but hardly any information. The draw then costs at most what
HMC's would and, the kernel being faster per gradient, mixes at least as well. (NNgHMC's
surrogate trajectory is as long as HMC's already: one per draw.)

Cost is counted in true gradients, the unit the library reports: on a model whose
gradient is cheap next to the networks this favours the learned kernel (the networks'
time is not charged).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import mixing
from pymc_neural_steps.programs import hmc as hmc_programs
from pymc_neural_steps.programs.base import StatSpec

__all__ = [
    "GATE_STATS",
    "HMC_PILOT_STEPS",
    "LEARNED_PILOT_STEPS",
    "MAX_TRANSITIONS_PER_DRAW",
    "PILOT_WALKERS",
    "Gate",
    "decide",
    "gate_chains",
    "pilot",
    "score_pilots",
    "transitions_per_draw",
    "undecided",
]

# Walkers of a pilot (all chains together in the fast driver); each runs this many
# transitions. HMC's pilot is shorter: it costs a whole trajectory per transition, and
# at λ = π/2 a well-whitened HMC decorrelates within a few transitions.
PILOT_WALKERS = 32
LEARNED_PILOT_STEPS = 64
HMC_PILOT_STEPS = 16
# A bound on ``transitions_per_draw`` (HMC's own trajectories are bounded by 1,024 steps).
MAX_TRANSITIONS_PER_DRAW = 1024

GATE_STATS = (
    # ESS per true gradient in the worst direction, from the pilots (NaN before the gate).
    StatSpec("gate_learned_ess_per_grad", np.float64),
    StatSpec("gate_hmc_ess_per_grad", np.float64),
    StatSpec("learned_kernel", bool),  # this iteration's kernel was the learned one
    # True gradients of the pilots, reported on the iteration after the gate (else 0).
    StatSpec("gate_grad_evals", np.int64),
    # Kernel transitions this iteration made (``transitions_per_draw`` in the draws).
    StatSpec("n_transitions", np.int64),
)


class Gate(NamedTuple):
    decided: jax.Array  # bool
    use_learned: jax.Array  # bool: draw with the learned kernel
    learned_score: jax.Array  # ESS per true gradient, worst direction
    hmc_score: jax.Array
    learned_resolved: jax.Array  # bool
    hmc_resolved: jax.Array
    # int: learned transitions per draw (``transitions_per_draw``; NNgHMC draws one)
    transitions: jax.Array


def undecided(trained=None) -> Gate:
    """A chain's gate before the pilots. A kernel loaded from a file (``trained``, a
    ``trained.py`` kernel) is taken as it is, with the transitions per draw of the run
    that trained it (one if that run's gate did not choose)."""
    nan = jnp.full((), jnp.nan)
    flag = jnp.asarray(trained is not None)
    saved = 1 if trained is None else trained.report.get("transitions_per_draw") or 1
    return Gate(flag, jnp.asarray(True), nan, nan, flag, flag, jnp.asarray(saved, jnp.int64))


def transitions_per_draw(learned: mixing.MixingEstimate, learned_cost, hmc_cost) -> jax.Array:
    """Learned transitions per draw: the true gradients of one HMC transition divided by
    a learned one's (so that a draw costs no more than HMC's), at most the learned
    kernel's autocorrelation time 1/ESS-per-transition (rounded up), at least one."""
    affordable = jnp.floor(hmc_cost / jnp.maximum(learned_cost, 1.0))
    tau = jnp.ceil(1.0 / jnp.maximum(learned.ess_per_step, 1.0 / MAX_TRANSITIONS_PER_DRAW))
    k = jnp.clip(jnp.minimum(affordable, tau), 1, MAX_TRANSITIONS_PER_DRAW)
    return jnp.nan_to_num(k, nan=1.0).astype(jnp.int64)


def _hmc_start(carry):
    """(kernel state, true gradients its refresh spent) of a learned method's carry."""
    return carry.hmc.state, carry.hmc.refresh_evals


def pilot(iteration, refresh, key, carry, starts, extras, num_steps: int, start_of=_hmc_start):
    """Run ``iteration(key, carry, extras) -> (carry, position, stats)`` for ``num_steps``
    transitions from each row of ``starts`` (w, d), ``refresh`` placing the chain there;
    ``start_of(carry)`` gives the placed chain's (state, refresh gradients).

    Returns (positions (w, n + 1, d), log densities (w, n + 1), true gradients per
    transition, true gradients spent in all)."""

    def one_walker(key, x):
        start = refresh(carry, x, extras)
        state, refresh_evals = start_of(start)

        def body(c, k):
            c, position, stats = iteration(k, c, extras)
            return c, (position, stats[2], stats[3])  # COMMON_STATS: model_logp, n_grad_evals

        _, (positions, logdensity, grads) = jax.lax.scan(
            body, start, jax.random.split(key, num_steps)
        )
        positions = jnp.concatenate([state.position[None], positions])
        logdensity = jnp.concatenate([state.logdensity[None], logdensity])
        return positions, logdensity, grads, refresh_evals

    keys = jax.random.split(key, starts.shape[0])
    positions, logdensity, grads, refresh_evals = jax.vmap(one_walker)(keys, starts)
    # A refresh's gradient is reported on the first transition's stats as well.
    spent = jnp.sum(grads)
    per_transition = jnp.mean(grads) - jnp.mean(refresh_evals) / num_steps
    return positions, logdensity, per_transition, spent


def decide(learned: mixing.MixingEstimate, learned_cost, hmc: mixing.MixingEstimate,
           hmc_cost) -> Gate:
    learned_score = learned.ess_per_step / jnp.maximum(learned_cost, 1.0)
    hmc_score = hmc.ess_per_step / jnp.maximum(hmc_cost, 1.0)
    use = learned.resolved & (learned_score > hmc_score)
    transitions = transitions_per_draw(learned, learned_cost, hmc_cost)
    return Gate(jnp.asarray(True), use, learned_score, hmc_score, learned.resolved,
                hmc.resolved, transitions)


def gate_chains(method, key, carry, walkers_per_chain: int):
    """The gate for a batch of chains (leading axis) that share one decision: each chain
    runs both pilots from its first ``walkers_per_chain`` walkers; the pilots of all
    chains are scored together. Returns (gate, true gradients spent per chain)."""
    frozen = carry._replace(hmc=jax.vmap(hmc_programs.freeze)(carry.hmc))

    def hmc_iteration(k, c, extras):
        return method.hmc_iteration(k, c, extras, False, 0)

    def both(key, chain):
        starts = chain.training.walkers[:walkers_per_chain]
        extras = chain.training.context.extras
        key_learned, key_hmc = jax.random.split(key)
        learned = pilot(method.learned_iteration, method.refresh, key_learned, chain, starts,
                        extras, LEARNED_PILOT_STEPS)
        true = pilot(hmc_iteration, method.refresh, key_hmc, chain, starts, extras,
                     HMC_PILOT_STEPS)
        return learned, true

    chains = carry.started.shape[0]
    learned, true = jax.vmap(both)(jax.random.split(key, chains), frozen)

    return score_pilots(learned, true), (learned[3] + true[3]).astype(jnp.int64)


def score_pilots(learned, true) -> Gate:
    """The gate from two batches of pilots (``pilot``'s outputs with a leading chain
    axis): both scored in the slowest directions of their pooled positions."""

    def flat(a):
        return a.reshape(-1, *a.shape[2:])

    learned_x, learned_logp = flat(learned[0]), flat(learned[1])
    hmc_x, hmc_logp = flat(true[0]), flat(true[1])
    dim = learned_x.shape[-1]
    directions = mixing.principal_directions(
        jnp.concatenate([learned_x.reshape(-1, dim), hmc_x.reshape(-1, dim)])
    )
    return decide(
        mixing.worst_direction(learned_x, learned_logp, directions),
        jnp.mean(learned[2]),
        mixing.worst_direction(hmc_x, hmc_logp, directions),
        jnp.mean(true[2]),
    )
