"""Gradient regression for NNgHMC's surrogate: fits, standardises, holds out, pools, jits."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps.surrogate import default_spec, make_surrogate
from pymc_neural_steps.training import (
    MIN_PAIRS,
    fit_gradient_surrogate,
    heldout_slots,
)

jax.config.update("jax_enable_x64", True)

DIM, CAPACITY = 6, 2048
RNG = np.random.default_rng(0)
CURVATURE = (lambda a: a @ a.T / DIM + np.eye(DIM))(RNG.normal(size=(DIM, DIM)))
CENTRE = RNG.normal(size=DIM) * 3


def gradient(x):
    """A smooth, not quite linear 'likelihood gradient' on a far-off, stretched scale."""
    return -(x - CENTRE) @ CURVATURE * 40.0 + 5.0 * np.sin(x)


def data(n, capacity=CAPACITY, seed=1):
    rng = np.random.default_rng(seed)
    xs = np.zeros((capacity, DIM))
    gs = np.zeros((capacity, DIM))
    x = CENTRE + rng.normal(size=(min(n, capacity), DIM)) * np.linspace(0.1, 2.0, DIM)
    xs[: len(x)], gs[: len(x)] = x, gradient(x)
    return xs, gs


@eqx.filter_jit
def fit(key, surrogate, xs, gs, count, steps=1500):
    return fit_gradient_surrogate(key, surrogate, xs, gs, count, steps=steps)


@pytest.fixture(scope="module")
def fitted():
    xs, gs = data(1500)
    surrogate = make_surrogate(default_spec(DIM), jax.random.key(0))
    return xs, gs, fit(jax.random.key(1), surrogate, xs, gs, 1500)


def test_fits_a_smooth_gradient_field(fitted):
    xs, gs, (surrogate, report) = fitted
    assert float(report.relative_error) < 0.05
    assert float(report.loss) < 0.01
    # On fresh points from the same distribution, too.
    new_x, new_g = data(200, capacity=200, seed=7)
    predicted = jax.vmap(surrogate)(jnp.asarray(new_x))
    assert np.linalg.norm(predicted - new_g) / np.linalg.norm(new_g) < 0.05


def test_standardisation_is_the_data_s_mean_and_sd(fitted):
    xs, gs, (surrogate, report) = fitted
    train = ~heldout_slots(CAPACITY)[:1500]
    np.testing.assert_allclose(surrogate.x_mean, xs[:1500][train].mean(0), rtol=1e-10)
    np.testing.assert_allclose(surrogate.x_scale, xs[:1500][train].std(0), rtol=1e-10)
    np.testing.assert_allclose(surrogate.g_mean, gs[:1500][train].mean(0), rtol=1e-10)
    np.testing.assert_allclose(surrogate.g_scale, gs[:1500][train].std(0), rtol=1e-10)


def test_about_a_tenth_is_held_out_in_runs_of_consecutive_steps(fitted):
    *_, (_, report) = fitted
    assert int(report.num_train) + int(report.num_heldout) == 1500
    assert 0.08 < int(report.num_heldout) / 1500 < 0.12
    mask = heldout_slots(CAPACITY)
    runs = np.diff(np.flatnonzero(np.diff(mask.astype(int)) != 0))
    assert runs.min() >= 16  # no isolated held-out step between two training neighbours


def test_too_little_data_leaves_the_surrogate_alone():
    xs, gs = data(MIN_PAIRS - 1)
    surrogate = make_surrogate(default_spec(DIM), jax.random.key(0))
    out, report = fit(jax.random.key(1), surrogate, xs, gs, MIN_PAIRS - 1)
    assert np.isnan(float(report.loss)) and np.isnan(float(report.relative_error))
    for a, b in zip(jax.tree.leaves(eqx.filter(surrogate, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(out, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_wrapped_ring_buffer_and_a_traced_count_compile_once():
    xs, gs = data(CAPACITY)
    surrogate = make_surrogate(default_spec(DIM), jax.random.key(0))
    compiled = jax.jit(
        lambda arrays, count: fit_gradient_surrogate(
            jax.random.key(1), eqx.combine(arrays, static), xs, gs, count, steps=50
        )[1]
    )
    arrays, static = eqx.partition(surrogate, eqx.is_array)
    small = compiled(arrays, jnp.asarray(300))
    wrapped = compiled(arrays, jnp.asarray(10 * CAPACITY))  # the ring has wrapped: all valid
    assert compiled._cache_size() == 1
    assert int(small.num_train + small.num_heldout) == 300
    assert int(wrapped.num_train + wrapped.num_heldout) == CAPACITY


def test_pooled_buffers_of_several_chains():
    a_xs, a_gs = data(1000, seed=1)
    b_xs, b_gs = data(400, seed=2)
    surrogate = make_surrogate(default_spec(DIM), jax.random.key(0))
    _, report = fit(
        jax.random.key(1), surrogate, np.stack([a_xs, b_xs]), np.stack([a_gs, b_gs]),
        jnp.array([1000, 400]), steps=300,
    )
    assert int(report.num_train + report.num_heldout) == 1400


def test_warm_start_continues_from_the_previous_network(fitted):
    xs, gs, (surrogate, report) = fitted
    fresh = make_surrogate(default_spec(DIM), jax.random.key(0))
    _, cold = fit(jax.random.key(2), fresh, xs, gs, 1500, steps=50)
    _, warm = fit(jax.random.key(2), surrogate, xs, gs, 1500, steps=50)
    assert float(warm.loss) < float(cold.loss) / 10


def test_heldout_relative_error_counts_only_held_out_pairs():
    from pymc_neural_steps.training import heldout_relative_error

    xs = jnp.arange(12.0).reshape(6, 2)
    gs = jnp.ones((6, 2))
    mask = jnp.array([False, True, False, True, False, False])

    def doubled(x):  # predicts 2 where the truth is 1: relative error exactly 1
        return 2.0 * jnp.ones_like(x)

    assert float(heldout_relative_error(doubled, xs, gs, mask, slots=3)) == pytest.approx(1.0)
    assert float(heldout_relative_error(lambda x: jnp.ones_like(x), xs, gs, mask, slots=3)) == 0.0
    assert np.isnan(float(heldout_relative_error(doubled, xs, gs, mask & False, slots=3)))
