"""NNgHMC's kernel pieces without PyMC: ring buffer, recording, U-turns, paired acceptance."""

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps.kernels import hmc
from pymc_neural_steps.kernels import nnghmc as K

jax.config.update("jax_enable_x64", True)

DIM = 4
SCALES = jnp.array([0.5, 1.0, 2.0, 1.5])


def logdensity(x):
    return -0.5 * jnp.sum((x / SCALES) ** 2)


def exact_field(x):
    value, gradient = jax.value_and_grad(logdensity)(x)
    return value, gradient, gradient  # record the whole gradient


def test_buffer_is_a_ring_and_skips_what_it_is_told_to():
    buffer = K.buffer_init(3, 2)
    for i in range(5):
        pair = jnp.full(2, float(i)), jnp.full(2, -float(i))
        buffer = K.buffer_push(buffer, *pair, jnp.asarray(True))
    buffer = K.buffer_push(buffer, jnp.full(2, 99.0), jnp.full(2, 99.0), jnp.asarray(False))
    assert int(buffer.count) == 5
    # slots 0, 1, 2 were last written by pairs 3, 4, 2
    np.testing.assert_array_equal(buffer.positions[:, 0], [3.0, 4.0, 2.0])
    np.testing.assert_array_equal(buffer.gradients[:, 0], [-3.0, -4.0, -2.0])


def test_without_extras_it_is_the_hmc_kernel():
    # Same key, same field, same number of steps: the same transition as kernels/hmc.py.
    params = hmc.HMCParams(jnp.asarray(0.3), jnp.ones(DIM), jnp.asarray(7))
    state = hmc.init(jnp.array([0.3, -0.2, 1.0, 0.5]), logdensity)
    ours = jax.jit(K.build_kernel(logdensity, exact_field, exact=True))
    theirs = jax.jit(hmc.build_kernel(logdensity))
    for seed in range(5):
        key = jax.random.key(seed)
        new_ours, info_ours, _ = ours(key, state, params)
        new_theirs, info_theirs = theirs(key, state, params)
        np.testing.assert_allclose(new_ours.position, new_theirs.position, rtol=1e-13)
        assert float(info_ours.acceptance_rate) == float(info_theirs.acceptance_rate)
        assert int(info_ours.n_grad_evals) == 7 and int(info_ours.num_integrated) == 7
        state = new_ours


def test_a_short_trajectory_records_every_step_to_the_proposal_and_continuation_keeps_it():
    params = hmc.HMCParams(jnp.asarray(0.05), 1.0 / SCALES**2, jnp.asarray(5))
    state = hmc.init(jnp.array([0.3, -0.2, 1.0, 0.5]), logdensity)

    def record(buffer, xs, aux, n):
        return K.buffer_push_many(buffer, xs, aux, n)

    plain = K.build_kernel(logdensity, exact_field, exact=True)
    extended = K.build_kernel(logdensity, exact_field, exact=True, find_uturn=True, record=record)
    key = jax.random.key(3)
    new_plain, info_plain, _ = plain(key, state, params)
    new_ext, info_ext, buffer = extended(key, state, params, K.buffer_init(64, DIM))
    # The continuation to the U-turn does not change the transition.
    np.testing.assert_array_equal(new_plain.position, new_ext.position)
    assert info_ext.num_steps == 5 and info_ext.num_integrated > 5
    assert info_ext.uturn_steps == info_ext.num_integrated  # stopped at its first U-turn
    assert int(info_ext.n_grad_evals) == int(info_ext.num_integrated)  # counted honestly
    # Pairs from the proposal's trajectory only, each a true (x, gradient) pair.
    assert int(buffer.count) == 5
    xs, gs = buffer.positions[:5], buffer.gradients[:5]
    np.testing.assert_allclose(gs, jax.vmap(jax.grad(logdensity))(xs), rtol=1e-12)


def test_many_rows_are_pushed_as_one_by_one():
    one = many = K.buffer_init(5, 2)
    rows = jnp.arange(8.0).reshape(4, 2)
    for i in range(3):
        one = K.buffer_push(one, rows[i], -rows[i], jnp.asarray(True))
    one = K.buffer_push(one, rows[0], -rows[0], jnp.asarray(True))
    many = K.buffer_push_many(many, rows, -rows, jnp.asarray(3))  # row 3 not kept
    many = K.buffer_push_many(many, rows[:1], -rows[:1], jnp.asarray(1))
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    # wrapping round the ring
    wrapped = K.buffer_push_many(many, rows, -rows, jnp.asarray(4))
    assert int(wrapped.count) == 8
    np.testing.assert_array_equal(wrapped.positions[:, 0], [2.0, 4.0, 6.0, 0.0, 0.0])


def test_a_long_trajectory_records_evenly_spaced_steps():
    params = hmc.HMCParams(jnp.asarray(0.01), 1.0 / SCALES**2, jnp.asarray(100))
    state = hmc.init(jnp.array([0.3, -0.2, 1.0, 0.5]), logdensity)

    def record(buffer, xs, aux, n):
        return K.buffer_push_many(buffer, xs, aux, n)

    kernel = K.build_kernel(logdensity, exact_field, exact=True, record=record, records=8)
    _, _, buffer = kernel(jax.random.key(2), state, params, K.buffer_init(64, DIM))
    # ceil(100 / 8) = 13: steps 13, 26, ..., 91 (7 rows; 104 is past the proposal)
    assert int(buffer.count) == 7
    xs, gs = buffer.positions[:7], buffer.gradients[:7]
    np.testing.assert_allclose(gs, jax.vmap(jax.grad(logdensity))(xs), rtol=1e-12)
    # the same points as the trajectory's own steps 13, 26, ...
    path = K.build_kernel(logdensity, exact_field, exact=True, record=record, records=100)
    _, _, every = path(jax.random.key(2), state, params, K.buffer_init(128, DIM))
    np.testing.assert_allclose(xs, every.positions[12:91:13], rtol=1e-12)


def test_first_uturn_of_a_whitened_gaussian_is_near_pi():
    # In the metric that whitens a Gaussian, x_t = x0 cos t + p0 sin t, so
    # (x_t - x0)·p_t = |x0|² (1 - cos t) sin t + |p0|² cos t sin t + O(x0·p0) ≈ d sin t
    # for large d: the first U-turn is at t ≈ π (and NNgHMC's λ, half of it, is π/2).
    dim = 200
    scales = jnp.linspace(0.5, 3.0, dim)

    def density(x):
        return -0.5 * jnp.sum((x / scales) ** 2)

    def field(x):
        value, gradient = jax.value_and_grad(density)(x)
        return value, gradient, None

    kernel = K.build_kernel(density, field, exact=True, find_uturn=True)
    eps = 0.05
    params = hmc.HMCParams(jnp.asarray(eps), scales**2, jnp.asarray(1))

    def one(key):
        key_x, key_step = jax.random.split(key)
        x0 = jax.random.normal(key_x, (dim,)) * scales
        _, info, _ = kernel(key_step, hmc.init(x0, density), params)
        return info.uturn_steps * eps

    times = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 64))
    assert np.all(times > 0)
    assert abs(float(jnp.mean(times)) - np.pi) < 0.15


def test_non_finite_surrogate_is_rejected_and_flagged():
    def nan_field(x):
        return jnp.zeros(()), jnp.full_like(x, jnp.nan), None

    kernel = jax.jit(K.build_kernel(logdensity, nan_field, exact=False, find_uturn=True))
    state = hmc.HMCState(jnp.ones(DIM), logdensity(jnp.ones(DIM)), jnp.full(DIM, jnp.nan))
    params = hmc.HMCParams(jnp.asarray(0.1), jnp.ones(DIM), jnp.asarray(4))
    new_state, info, _ = kernel(jax.random.key(0), state, params)
    np.testing.assert_array_equal(new_state.position, state.position)
    assert bool(info.is_nonfinite) and not bool(info.is_accepted)
    assert float(info.acceptance_rate) == 0.0
    assert int(info.n_grad_evals) == 0 and int(info.n_field_evals) == 4


def test_paired_acceptance_agrees_for_a_perfect_surrogate_and_drops_for_a_bad_one():
    position = jnp.array([0.3, -0.2, 1.0, 0.5])
    params = hmc.HMCParams(jnp.asarray(0.4), 1.0 / SCALES**2, jnp.asarray(8))
    true_field = jax.value_and_grad(logdensity)

    def pair(key, surrogate):
        return K.paired_acceptance(key, position, params, true_field, surrogate, logdensity)

    keys = jax.random.split(jax.random.key(1), 32)
    true_acc, same = jax.vmap(lambda k: pair(k, jax.grad(logdensity)))(keys)
    np.testing.assert_allclose(true_acc, same, rtol=1e-12)
    _, bad = jax.vmap(lambda k: pair(k, lambda x: 3.0 * jax.grad(logdensity)(x) + 1.0))(keys)
    assert float(jnp.mean(bad)) < float(jnp.mean(true_acc)) - 0.3
