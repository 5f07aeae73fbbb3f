"""The skeleton every learned kernel shares (programs/learned.py), without a PyMC model:
training rounds over any tune, reports added step-weighted, the whitening's centre, the
chains' pooled moments, the shared ensemble of a pooled run, and no training after tune=0."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, ensemble
from pymc_neural_steps.programs import learned
from pymc_neural_steps.programs.learned import TrainingReport, training_rounds

jax.config.update("jax_enable_x64", True)


def test_rounds_fit_any_tune():
    per_round, at = training_rounds(2000, 200, 1000)
    assert per_round * len(at) == 2000 and min(at) == 199
    # Training ends early enough to leave a gated-out chain's HMC room to adapt.
    assert max(at) < 200 + learned.TRAINING_END * 800
    _, at = training_rounds(2000, 200, 230)
    assert min(at) == 199 and max(at) < 230  # the rest is finished at stop_tuning
    assert training_rounds(2000, 200, 150)[1] == frozenset()
    assert training_rounds(0, 200, 1000) == (0, frozenset())


def test_rounds_without_a_known_tune_follow_the_default_horizon():
    per_round, at = training_rounds(2000, 200, None)
    assert per_round == 100 and len(at) == 20
    assert min(at) == 199 and max(at) < learned.DEFAULT_TUNE_HORIZON


def report(steps, rollbacks, loss, acceptance, grads, restored=0, gate_grads=0):
    return TrainingReport(*(jnp.asarray(v) for v in (steps, rollbacks, loss, acceptance,
                                                       grads, restored, gate_grads)))


def test_reports_add_with_means_weighted_by_accepted_steps():
    a = report(10, 2, 1.0, 0.5, 100)  # 8 accepted steps
    b = report(4, 0, 4.0, 0.8, 40, 1)  # 4 accepted steps
    total = learned.add_reports(a, b)
    assert int(total.steps) == 14 and int(total.rollbacks) == 2
    assert int(total.grad_evals) == 140 and int(total.restored) == 1
    np.testing.assert_allclose(float(total.loss), (8 * 1.0 + 4 * 4.0) / 12)
    np.testing.assert_allclose(float(total.acceptance), (8 * 0.5 + 4 * 0.8) / 12)
    # An empty report (NaN means) leaves the other unchanged, and two empties stay NaN.
    same = learned.add_reports(learned.empty_report(), a)
    np.testing.assert_allclose(float(same.loss), 1.0)
    assert np.isnan(float(learned.add_reports(learned.empty_report(), learned.empty_report()).loss))


def test_report_stats_are_packed_in_the_declared_order():
    r = report(3, 1, 0.25, 0.5, 7, 1)
    np.testing.assert_array_equal(learned.pack_report(r, restored=False), [3, 1, 0.25, 0.5, 7, 0])
    packed = learned.pack_report(r, restored=True)
    assert len(packed) == len(learned.TRAINING_STATS) + 1 and packed[-1] == 1


def test_centre_is_the_mean_of_a_slow_window_taken_at_its_end():
    welford, center = adaptation.welford_init(2), jnp.zeros(2)
    points = [jnp.array([1.0, 2.0]), jnp.array([3.0, 6.0]), jnp.array([100.0, 100.0])]
    codes = [adaptation.SLOW, adaptation.SLOW_END]
    for code, x in zip(codes, points[:2]):
        welford, center = learned.center_update(jnp.asarray(code), welford, center, x)
    np.testing.assert_allclose(center, [2.0, 4.0])
    assert float(welford.count) == 0  # the next window starts afresh
    # Outside the slow windows nothing is collected and the centre stays.
    welford, center = learned.center_update(
        jnp.asarray(adaptation.FAST), welford, center, points[2]
    )
    np.testing.assert_allclose(center, [2.0, 4.0])
    assert float(welford.count) == 0


def test_pooled_moments_are_those_of_the_mixture_of_the_chains():
    centers = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    variances = jnp.array([[1.0, 4.0], [1.0, 4.0]])
    center, inverse_mass, step_size = learned.mixture_moments(
        centers, variances, jnp.array([0.1, 0.4])
    )
    np.testing.assert_allclose(center, [1.0, 2.0])
    np.testing.assert_allclose(inverse_mass, [2.0, 5.0])  # within + between (1 each)
    np.testing.assert_allclose(step_size, 0.2)  # geometric mean


def test_the_shared_ensemble_round_trips_through_a_pooled_round():
    chains, walkers, dim = 3, 5, 2
    k = learned.walkers_per_chain(8, chains)
    assert k == 3
    positions = jnp.arange(chains * walkers * dim, dtype=jnp.float64).reshape(chains, walkers, dim)
    context = learned_context(chains)
    batched = ensemble.TrainingState(
        params=jnp.ones((chains, 4)), opt_state=(), walkers=positions, context=context,
        num_steps=jnp.zeros(chains, jnp.int64), num_rejected=jnp.zeros(chains, jnp.int64),
        loss=jnp.zeros(chains),
    )
    shared = learned.gather_ensemble(batched, k)
    assert shared.walkers.shape == (chains * k, dim)
    np.testing.assert_array_equal(shared.walkers[:k], positions[0, :k])
    np.testing.assert_array_equal(shared.walkers[k:2 * k], positions[1, :k])
    # A round moves the shared walkers and the networks; scattering gives each chain its
    # share back, the rest of its walkers untouched, and the same networks everywhere.
    moved = shared._replace(walkers=shared.walkers + 1000.0, params=shared.params * 2)
    back = learned.scatter_ensemble(batched, moved, k)
    np.testing.assert_array_equal(back.walkers[:, :k], positions[:, :k] + 1000.0)
    np.testing.assert_array_equal(back.walkers[:, k:], positions[:, k:])
    np.testing.assert_array_equal(back.params, jnp.full((chains, 4), 2.0))
    np.testing.assert_array_equal(back.context.extras[0], batched.context.extras[0])


def learned_context(chains):
    from typing import NamedTuple

    class Context(NamedTuple):
        center: jax.Array
        extras: tuple

    return Context(jnp.zeros((chains, 2)), (jnp.arange(chains, dtype=jnp.float64),))


def test_no_training_is_owed_by_chains_that_never_warmed_up():
    def carry(warmup_iteration, started, num_steps):
        return SimpleNamespace(
            warmup_iteration=np.asarray(warmup_iteration), started=np.asarray(started),
            training=SimpleNamespace(num_steps=np.asarray(num_steps)),
        )

    assert not learned.training_pending(100, carry([0, 0], [False, False], [0, 0]))  # tune=0
    assert learned.training_pending(100, carry([50, 50], [False, False], [0, 0]))
    assert learned.training_pending(100, carry([200, 200], [True, True], [60, 60]))
    assert not learned.training_pending(100, carry([200, 200], [True, True], [100, 100]))


def test_hmc_follows_its_own_schedule_then_the_drivers():
    own = jnp.asarray(adaptation.window_codes(200))
    slow, end, fast = adaptation.SLOW, adaptation.SLOW_END, adaptation.FAST
    # Before training starts: HMC's own schedule, whatever the driver says.
    assert int(learned.hmc_code(own, 0, slow)) == int(own[0])
    assert int(learned.hmc_code(own, 199, end)) == int(own[199])
    # After it: the driver's schedule (Stan's windows of the whole warm-up, and its
    # terminal buffer), except a window end too soon after the switch to hold a variance.
    assert int(learned.hmc_code(own, 200, slow)) == slow
    assert int(learned.hmc_code(own, 210, end)) == slow
    assert int(learned.hmc_code(own, 249, end)) == end
    assert int(learned.hmc_code(own, 960, fast)) == fast


def test_the_chain_runs_hmc_until_the_gate_has_decided():
    from pymc_neural_steps.programs import gate as gates

    method = learned.LearnedMethod(*(lambda *a: None for _ in range(7)))
    program = learned.learned_program(method, learned_mode="toy", train_steps=10,
                                      hmc_warmup=20, num_walkers=4, stat_specs=(),
                                      trained=False)

    def carry(decided, use):
        gate = gates.undecided()._replace(decided=np.asarray([decided] * 2),
                                          use_learned=np.asarray([use] * 2))
        return SimpleNamespace(started=np.asarray([True, True]), gate=gate)

    assert program.mode_of(carry(False, True)) == learned.HMC_MODE
    assert program.mode_of(carry(True, False)) == learned.HMC_MODE
    assert program.mode_of(carry(True, True)) != learned.HMC_MODE


def test_a_draw_of_several_transitions_adds_counts_and_keeps_the_last_state():
    names = ("acceptance_rate", "diverging", "model_logp", "n_grad_evals", "step_size")

    def iteration(key, carry, extras):
        count = carry + 1
        stats = jnp.stack([count / 10.0, (count == 2) * 1.0, -count * 1.0, 3.0, count * 1.0])
        return count, jnp.full(2, count * 1.0), stats

    key = jax.random.key(0)
    carry, position, stats = learned.repeat_transitions(iteration, names, key, 0, (), 4)
    assert int(carry) == 4 and position.tolist() == [4.0, 4.0]
    # acceptance averaged, diverging if any, n_grad_evals summed, the rest the last one's.
    np.testing.assert_allclose(stats, [0.25, 1.0, -4.0, 12.0, 4.0])
    one = learned.repeat_transitions(iteration, names, key, 0, (), 1)
    np.testing.assert_allclose(one[2], iteration(key, 0, ())[2])


def test_the_transitions_of_a_draw_never_share_random_numbers():
    """Regression: transition i once drew from fold_in(key, i), which JAX's partitionable
    threefry makes equal to split(key)[i], the keys the first transition splits its key
    into (momentum, accept): the second transition reused the first's random numbers and
    the chain was biased (NeuTraHMC's funnel, v's mean 25 MCSEs off). Every key a draw's
    transitions use, and the two each splits it into, must be distinct."""
    names = ("acceptance_rate",)

    def iteration(key, carry, extras):
        used = jnp.stack([jax.random.key_data(k) for k in (key, *jax.random.split(key))])
        return carry.at[carry_index(carry)].set(used), jnp.zeros(1), jnp.zeros(1)

    def carry_index(carry):
        return jnp.argmin(jnp.any(carry != 0, axis=(1, 2)))

    k = 6
    carry = jnp.zeros((k, 3, 2), jnp.uint32)
    carry, _, _ = learned.repeat_transitions(iteration, names, jax.random.key(7), carry, (), k)
    used = np.asarray(carry).reshape(-1, 2)
    assert len({tuple(row) for row in used}) == used.shape[0]
