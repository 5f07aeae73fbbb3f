"""The mixing gate (programs/gate.py) without a model: the decision rule, and the pilots
on hand-made kernels whose mixing is known (an independent sampler against one that
barely moves), with every true gradient counted."""

from types import SimpleNamespace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps import adaptation, mixing
from pymc_neural_steps.kernels import hmc
from pymc_neural_steps.programs import gate as gates
from pymc_neural_steps.programs.base import pack_stats
from pymc_neural_steps.programs.hmc import HMCCarry

jax.config.update("jax_enable_x64", True)

DIM = 2


def estimate(ess, resolved=True):
    return mixing.MixingEstimate(jnp.asarray(ess), jnp.asarray(resolved))


def test_the_learned_kernel_needs_a_resolved_and_higher_score():
    # ESS per gradient: 0.5 / 10 = 0.05 against HMC's 0.8 / 40 = 0.02.
    assert bool(gates.decide(estimate(0.5), 10.0, estimate(0.8), 40.0).use_learned)
    assert not bool(gates.decide(estimate(0.5), 10.0, estimate(0.8), 4.0).use_learned)
    # Unresolved: its figure is only a bound, however favourable.
    gate = gates.decide(estimate(0.5, False), 1.0, estimate(0.01, False), 40.0)
    assert not bool(gate.use_learned) and bool(gate.decided)
    assert float(gate.learned_score) == 0.5 and float(gate.hmc_score) == 0.01 / 40


class Context(NamedTuple):
    extras: tuple


class Training(NamedTuple):
    walkers: jax.Array
    context: Context


class Carry(NamedTuple):
    hmc: HMCCarry
    training: Training
    started: jax.Array


def chain(key, walkers=16):
    x = jax.random.normal(key, (walkers, DIM))
    state = hmc.HMCState(x[0], jnp.zeros(()), jnp.zeros(DIM))
    warmup = adaptation.warmup_init(DIM, 0.5)
    hmc_carry = HMCCarry(state, warmup, jnp.asarray(0.5), warmup.inverse_mass, jnp.zeros((), int))
    return Carry(hmc_carry, Training(x, Context(())), jnp.asarray(True))


def kernel(moves: bool, grads: int):
    """An independent N(0, I) sampler (``moves``) or one that stays put, at ``grads`` true
    gradients per transition."""

    def iteration(key, carry, extras, *_):
        x = jax.random.normal(key, (DIM,)) if moves else carry.hmc.state.position
        state = carry.hmc.state._replace(position=x, logdensity=-0.5 * jnp.sum(x**2))
        stats = pack_stats(1.0, False, state.logdensity, grads + carry.hmc.refresh_evals)
        hmc_carry = carry.hmc._replace(state=state, refresh_evals=jnp.zeros((), int))
        return carry._replace(hmc=hmc_carry), x, stats

    return iteration


def refresh(carry, x, extras):
    state = carry.hmc.state._replace(position=x, logdensity=-0.5 * jnp.sum(x**2))
    return carry._replace(hmc=carry.hmc._replace(state=state, refresh_evals=jnp.ones((), int)))


def method(learned_moves, learned_grads, hmc_moves, hmc_grads):
    return SimpleNamespace(
        learned_iteration=kernel(learned_moves, learned_grads),
        hmc_iteration=kernel(hmc_moves, hmc_grads),
        refresh=refresh,
    )


def two_chains():
    return jax.tree.map(lambda *a: jnp.stack(a), chain(jax.random.key(0)), chain(jax.random.key(1)))


def test_a_fast_learned_kernel_passes_and_a_stuck_one_falls_back():
    carry, k = two_chains(), 8
    good, spent = gates.gate_chains(method(True, 5, True, 50), jax.random.key(2), carry, k)
    assert bool(good.use_learned) and bool(good.learned_resolved)
    # Both pilots independent: ESS per transition near 1, so the scores are ~1/5 and ~1/50.
    assert 0.1 < float(good.learned_score) < 0.3 and 0.01 < float(good.hmc_score) < 0.03
    # Every gradient counted: per chain, k walkers × (one refresh + pilot length × cost)
    # for each pilot.
    per_chain = k * (2 + gates.LEARNED_PILOT_STEPS * 5 + gates.HMC_PILOT_STEPS * 50)
    np.testing.assert_array_equal(spent, [per_chain, per_chain])

    stuck, _ = gates.gate_chains(method(False, 1, True, 50), jax.random.key(2), carry, k)
    assert not bool(stuck.use_learned) and not bool(stuck.learned_resolved)
    # It never moved: ρ_k = 1 at every lag, τ = 2n − 1 over the pilot's n = 64 lags,
    # and the figure is that bound.
    bound = 1 / (2 * gates.LEARNED_PILOT_STEPS - 1)
    assert float(stuck.learned_score) == pytest.approx(bound)


@pytest.mark.parametrize(
    "learned_ess, learned_cost, hmc_cost, expected",
    [
        (0.1, 10.0, 300.0, 10),  # τ = 10 transitions bounds it below the 30 affordable
        (0.1, 10.0, 40.0, 4),  # four learned transitions cost one HMC trajectory
        (0.9, 2.0, 60.0, 2),  # τ ≈ 1.1: two transitions already decorrelate
        (1.5, 2.0, 60.0, 1),  # antithetic (τ < 1): one
        (0.01, 50.0, 20.0, 1),  # a learned transition dearer than HMC's: one
        (0.0, 1.0, 5000.0, gates.MAX_TRANSITIONS_PER_DRAW),  # no mixing measured: the bound
    ],
)
def test_transitions_per_draw_fit_one_hmc_trajectory_and_the_autocorrelation_time(
    learned_ess, learned_cost, hmc_cost, expected
):
    k = gates.transitions_per_draw(estimate(learned_ess), learned_cost, hmc_cost)
    assert int(k) == expected
    gate = gates.decide(estimate(learned_ess), learned_cost, estimate(0.5), hmc_cost)
    assert int(gate.transitions) == expected


def test_a_loaded_kernel_keeps_the_transitions_per_draw_of_the_run_that_trained_it():
    assert int(gates.undecided().transitions) == 1 and not bool(gates.undecided().decided)
    loaded = gates.undecided(SimpleNamespace(report={"transitions_per_draw": 5}))
    assert bool(loaded.decided) and bool(loaded.use_learned) and int(loaded.transitions) == 5
    # A kernel saved before the gate chose (or by an older version): one per draw.
    assert int(gates.undecided(SimpleNamespace(report={})).transitions) == 1
