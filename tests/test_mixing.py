"""ESS per transition from short runs of many walkers (mixing.py), checked against
AR(1) series whose integrated autocorrelation time is known: τ = (1 + φ) / (1 − φ)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps import mixing

jax.config.update("jax_enable_x64", True)


def ar1(phi, walkers=64, n=64, seed=0):
    """Stationary AR(1) series (walkers, n) with unit variance."""
    rng = np.random.default_rng(seed)
    z = np.empty((walkers, n))
    z[:, 0] = rng.normal(size=walkers)
    for t in range(1, n):
        z[:, t] = phi * z[:, t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=walkers)
    return jnp.asarray(z)


def test_autocorrelation_of_ar1_decays_geometrically():
    rho = np.asarray(mixing.autocorrelation(ar1(0.6, walkers=2000)))
    assert rho[0] == pytest.approx(1.0)
    np.testing.assert_allclose(rho[1:4], 0.6 ** np.arange(1, 4), atol=0.03)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_ess_per_step_matches_the_ar1_value(phi):
    estimate = mixing.ess_per_step(ar1(phi, walkers=256))
    assert bool(estimate.resolved)
    assert float(estimate.ess_per_step) == pytest.approx((1 - phi) / (1 + phi), rel=0.2)


def test_a_slow_series_is_unresolved_and_bounded_by_the_pilot_length():
    estimate = mixing.ess_per_step(ar1(0.999, n=32))
    assert not bool(estimate.resolved)
    assert float(estimate.ess_per_step) < 1 / 16


def test_a_constant_series_has_no_ess():
    estimate = mixing.ess_per_step(jnp.ones((8, 16)))
    assert float(estimate.ess_per_step) == 0.0 and not bool(estimate.resolved)


def test_the_worst_direction_finds_the_slow_axis_of_a_correlated_pair():
    # x = fast + slow, y = fast − slow (scaled very differently): the slow component is
    # a principal direction of the standardised pair, not a coordinate.
    fast, slow = ar1(0.0, seed=1), ar1(0.95, seed=2)
    draws = jnp.stack([1e3 * (fast + slow), 1e-2 * (fast - slow)], axis=-1)
    logdensity = ar1(0.0, seed=3)
    directions = mixing.principal_directions(draws.reshape(-1, 2))
    worst = mixing.worst_direction(draws, logdensity, directions)
    along_slow = mixing.ess_per_step(slow)
    assert float(worst.ess_per_step) == pytest.approx(float(along_slow.ess_per_step), rel=0.1)
    each_coordinate = [float(mixing.ess_per_step(draws[..., i]).ess_per_step) for i in (0, 1)]
    assert float(worst.ess_per_step) < 0.5 * min(each_coordinate)
