"""EntropyFlowMC's program pieces (programs/entropy.py) on hand-made Gaussians, without a
PyMC model: the dense whitening's step size and pooled moments, the re-whitening pilot and
the re-whitening itself, the walkers' spread order, and a chain that never warms up
(tune=0) sampling as plain HMC."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps.programs import entropy as program
from pymc_neural_steps.programs import learned

jax.config.update("jax_enable_x64", True)


def standard_normal(dim):
    return SimpleNamespace(dim=dim, logdensity=lambda x: -0.5 * jnp.sum(x**2))


def test_dense_whitening_option():
    assert program.resolve_dense_whitening("auto", program.DENSE_WHITENING_MAX_DIM)
    assert not program.resolve_dense_whitening("auto", program.DENSE_WHITENING_MAX_DIM + 1)
    assert program.resolve_dense_whitening(True, 1000)
    with pytest.raises(ValueError, match="dense_whitening"):
        program.resolve_dense_whitening("yes", 2)


def test_dense_step_size_grows_with_the_correlation_and_is_clipped():
    h = 0.05
    assert float(program.dense_step_size(h, jnp.ones(2), jnp.eye(2))) == h
    correlated = jnp.array([[1.0, 0.99], [0.99, 1.0]])
    grown = float(program.dense_step_size(h, jnp.ones(2), correlated))
    np.testing.assert_allclose(grown, h / np.sqrt(0.01))  # 0.5 < 2^(-1/6): not clipped
    strongly = jnp.array([[1.0, 1 - 1e-8], [1 - 1e-8, 1.0]])
    np.testing.assert_allclose(program.dense_step_size(h, jnp.ones(2), strongly), 2 ** (-1 / 6))


def test_pooled_dense_moments_are_the_covariance_of_all_points():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 3)) + shift for n, shift in ((40, 0.0), (25, 2.0), (60, -1.0))]
    counts = jnp.array([len(p) for p in parts], jnp.float64)
    means = jnp.stack([p.mean(0) for p in parts])
    covs = jnp.stack([np.cov(p.T, ddof=1) for p in parts])
    count, cov = program.pooled_dense_moments(counts, means, covs)
    assert float(count) == 125
    np.testing.assert_allclose(cov, np.cov(np.concatenate(parts).T, ddof=1), rtol=1e-10)


def test_the_pilot_collects_only_while_asked():
    moments = (jnp.zeros(()), jnp.zeros(2), jnp.zeros((2, 2)))
    walkers = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    center = jnp.array([1.0, 1.0])
    moments = program.collect_pilot(moments, walkers, center, jnp.asarray(True))
    count, total, outer = moments
    assert float(count) == 2
    np.testing.assert_allclose(total, [2.0, 4.0])
    np.testing.assert_allclose(outer, [[4.0, 6.0], [6.0, 10.0]])
    same = program.collect_pilot(moments, walkers, center, jnp.asarray(False))
    for a, b in zip(same, moments):
        np.testing.assert_array_equal(a, b)


def small_settings(**options):
    options = {**dict(num_walkers=8, train_steps=30, hmc_warmup=20, width=4, depth=1,
                      rewhiten_steps=10), **options}
    return program.entropy_settings(standard_normal(2), **options)


def test_rewhitening_adopts_the_pilot_moments_and_restarts_the_networks():
    settings = small_settings()
    assert settings.pilot_steps == 10 and settings.dense
    old_center = jnp.array([0.5, 0.5])
    training = program.fresh_training(
        settings, jnp.zeros((8, 2)), old_center, jnp.eye(2), 0.1, ()
    )
    training = training._replace(num_steps=jnp.asarray(10, jnp.int64))
    rng = np.random.default_rng(2)
    cov = np.array([[2.0, 0.6], [0.6, 0.5]])
    points = rng.multivariate_normal([1.0, -1.0], cov, size=4000)
    moments = program.collect_pilot(
        program.empty_pilot(settings), jnp.asarray(points), old_center, jnp.asarray(True)
    )
    out = program.rewhiten(settings, training, moments)
    np.testing.assert_allclose(out.context.center, [1.0, -1.0], atol=0.06)
    np.testing.assert_allclose(out.context.inverse_mass, cov, atol=0.1)
    np.testing.assert_allclose(out.context.scale @ out.context.scale.T,
                               out.context.inverse_mass, rtol=1e-10)
    assert int(out.num_steps) == 10  # the budget's count goes on
    # ε grows with the new whitening's narrowest direction (here clipped at d^(-1/6)),
    # the networks restart at the template (zero output).
    assert float(out.params.step_size) > 0.1
    np.testing.assert_array_equal(out.params.halves[0].sqt.weights[-1],
                                  settings.template.halves[0].sqt.weights[-1])
    # Fewer than two points: nothing changes.
    few = program.collect_pilot(
        program.empty_pilot(settings), jnp.asarray(points[:1]), old_center, jnp.asarray(True)
    )
    kept = program.rewhiten(settings, training, few)
    np.testing.assert_array_equal(kept.context.inverse_mass, training.context.inverse_mass)


def test_rounds_rewhiten_once_at_the_pilot_end():
    settings = small_settings()
    assert settings.per_round == 2
    training = program.fresh_training(
        settings, jax.random.normal(jax.random.key(0), (8, 2)), jnp.zeros(2), jnp.eye(2), 0.5,
        (),
    )
    run = jax.jit(lambda key_data, t: program.run_round(settings, key_data, t, (), 8))
    key_data = jax.random.key_data(jax.random.key(1))
    for _ in range(4):  # 8 steps: collecting
        training, _, report = run(key_data, training)
        assert int(report.steps) == 2 and int(report.grad_evals) == 2 * 8 * 2
        np.testing.assert_array_equal(training.context.inverse_mass, np.eye(2))
    training, _, _ = run(key_data, training)  # steps 9-10: the pilot ends, re-whitening
    assert int(training.num_steps) == 10
    assert float(training.context.pilot[0]) == 8 * 5  # eight walkers, five looks
    assert not np.array_equal(training.context.inverse_mass, np.eye(2))
    fixed = training.context.inverse_mass
    training, _, _ = run(key_data, training)  # after the pilot the whitening stays
    np.testing.assert_array_equal(training.context.inverse_mass, fixed)


def test_spread_order_puts_evenly_strided_walkers_first():
    order = program.spread_order(64, 16)
    assert sorted(order) == list(range(64))
    np.testing.assert_array_equal(order[:16], np.arange(0, 64, 4))


def test_a_chain_that_never_warms_up_samples_as_plain_hmc():
    prog = program.entropy_program(standard_normal(2), num_walkers=4, train_steps=10,
                                   hmc_warmup=20, width=4, depth=1)
    carry = prog.init(jnp.array([0.5, -0.5]), ())
    assert not prog.train_pending(carry)
    assert prog.mode_of(carry) == learned.HMC_MODE
    draw = jax.jit(lambda k, c: prog.draw(k, c, (), learned.HMC_MODE))
    names = [s.name for s in prog.stat_specs]
    for i in range(5):
        carry, _, stats = draw(jax.random.key(i), carry)
        assert float(stats[names.index("step_size")]) == 0.25 / 2**0.25
        assert np.isnan(float(stats[names.index("log_q_forward")]))
    assert int(carry.warmup_iteration) == 0 and not bool(carry.started)


def test_the_whitening_is_dense_only_when_asked_and_falls_back_without_points():
    diagonal = small_settings(dense_whitening=False)
    center, inverse_mass, eps = program.whitening_from(
        diagonal, jnp.zeros(2), jnp.array([2.0, 3.0]), 0.1, jnp.asarray(50.0), jnp.eye(2)
    )
    np.testing.assert_array_equal(inverse_mass, [2.0, 3.0])
    assert float(eps) == 0.1
    dense = small_settings()
    _, inverse_mass, eps = program.whitening_from(
        dense, jnp.zeros(2), jnp.array([2.0, 3.0]), 0.1, jnp.asarray(1.0), jnp.eye(2)
    )
    np.testing.assert_array_equal(inverse_mass, np.diag([2.0, 3.0]))  # one point: diagonal
    cov = jnp.array([[2.0, 1.2], [1.2, 3.0]])
    _, inverse_mass, eps = program.whitening_from(
        dense, jnp.zeros(2), jnp.array([2.0, 3.0]), 0.1, jnp.asarray(500.0), cov
    )
    assert inverse_mass.shape == (2, 2) and float(inverse_mass[0, 1]) > 1.0
    assert float(eps) > 0.1  # the correlation narrowed the diagonally whitened target
