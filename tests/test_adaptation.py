"""Warm-up adaptation: Stan's windows, dual averaging, Welford variance."""

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation as ad


def window_ends(codes):
    return list(np.flatnonzero(codes == ad.SLOW_END))


def test_stan_schedule_for_1000_iterations():
    codes = ad.window_codes(1000)
    # Stan: init buffer 75, windows 25, 50, 100, 200, 500 (stretched), term buffer 50.
    assert window_ends(codes) == [99, 149, 249, 449, 949]
    assert (codes[:75] == ad.FAST).all() and (codes[950:] == ad.FAST).all()
    assert (codes[75:950] >= ad.SLOW).all()


def test_short_warmup_uses_stans_proportions():
    codes = ad.window_codes(100)
    assert (codes[:15] == ad.FAST).all() and (codes[90:] == ad.FAST).all()
    assert window_ends(codes) == [89]


def test_open_ended_schedule_doubles_without_end():
    ends = [i for i in range(2000) if ad.window_code(i, None) == ad.SLOW_END]
    assert ends == [99, 149, 249, 449, 849, 1649]
    assert ad.window_code(10, None) == ad.FAST
    assert [ad.window_code(i, 1000) for i in (0, 99, 500, 999, 1200)] == [0, 2, 1, 0, 0]


def test_welford_matches_numpy():
    x = np.random.default_rng(0).normal(size=(500, 3)) * np.array([1.0, 10.0, 0.1])
    state = ad.welford_init(3)
    for row in x:
        state = ad.welford_update(state, jnp.asarray(row))
    n = len(x)
    expected = (n / (n + 5)) * x.var(axis=0, ddof=1) + 1e-3 * 5 / (n + 5)
    np.testing.assert_allclose(ad.welford_variance(state), expected, rtol=1e-10)


def test_dense_welford_matches_numpy():
    x = np.random.default_rng(1).normal(size=(300, 3)) @ np.array(
        [[1.0, 0.5, 0.0], [0.0, 2.0, -1.0], [0.0, 0.0, 0.3]]
    )
    state = ad.welford_init(3, dense=True)
    for row in x:
        state = ad.welford_update(state, jnp.asarray(row))
    np.testing.assert_allclose(state.mean, x.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(ad.welford_covariance(state), np.cov(x.T), rtol=1e-10)
    # The diagonal form gives the diagonal of the same estimate.
    diagonal = ad.welford_init(3)
    for row in x:
        diagonal = ad.welford_update(diagonal, jnp.asarray(row))
    np.testing.assert_allclose(ad.welford_covariance(diagonal), np.diag(np.cov(x.T)), rtol=1e-10)


def test_dual_averaging_finds_the_step_size_of_the_target_acceptance():
    # A toy acceptance curve a(ε) = exp(-ε²): the target 0.8 is at ε* = sqrt(-log 0.8).
    update = jax.jit(ad.dual_averaging_update)
    state = ad.dual_averaging_init(1.0)
    for _ in range(2000):
        eps = jnp.exp(state.log_step_size)
        state = update(state, jnp.exp(-(eps**2)), 0.8)
    np.testing.assert_allclose(np.exp(state.log_step_size_avg), np.sqrt(-np.log(0.8)), rtol=0.02)


def test_window_end_sets_mass_matrix_and_restarts():
    state = ad.warmup_init(2, 0.5)
    rng = np.random.default_rng(1)
    for _ in range(30):
        state = ad.warmup_update(state, ad.SLOW, jnp.asarray(rng.normal(size=2) * 3.0), 0.8)
    state = ad.warmup_update(state, ad.SLOW_END, jnp.asarray(rng.normal(size=2) * 3.0), 0.8)
    assert np.all(np.asarray(state.inverse_mass) > 3.0)
    assert float(state.welford.count) == 0.0 and float(state.dual_averaging.iteration) == 0.0
    step_size, inverse_mass = ad.warmup_final(state)
    assert np.isfinite(step_size)
