"""The transport map and latent HMC of ``kernels/transport.py``: a bijection with the right
log-Jacobian, the untrained kernel is HMC, and exactness whatever the map is."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps.kernels import hmc
from pymc_neural_steps.kernels import transport as tr


def perturbed(flow, scale, seed=0):
    """The map with every trainable leaf moved by independent N(0, scale²) noise."""
    leaves, treedef = jax.tree.flatten(flow)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved = [a + scale * jax.random.normal(k, a.shape) if eqx.is_inexact_array(a) else a
             for a, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, moved)


WHITENING = tr.Whitening(jnp.array([0.3, -1.0, 2.0, 0.0, 1.0]), jnp.array([1.5, 0.5, 2.0, 1.0, 3.0]))


def test_masks_condition_every_pair_somewhere():
    for dim in (2, 3, 5, 8, 20):
        masks = tr.coupling_masks(dim)
        assert masks.shape == (2 * int(np.ceil(np.log2(dim))), dim)
        for i in range(dim):
            for j in range(dim):
                if i != j:  # some layer transforms i given j
                    assert np.any(masks[:, j] & ~masks[:, i]), (dim, i, j)
    assert tr.coupling_masks(1).shape == (0, 1)


def test_the_untrained_map_is_the_whitening():
    flow = tr.init_map(jax.random.key(0), 5, 8, 1)
    z = jnp.linspace(-1, 1, 5)
    x, log_det = tr.forward(flow, WHITENING, z)
    np.testing.assert_allclose(x, WHITENING.center + WHITENING.scale * z, rtol=1e-14)
    np.testing.assert_allclose(log_det, np.sum(np.log(WHITENING.scale)), rtol=1e-14)


@pytest.mark.parametrize("depth", [1, 2])
def test_inverse_and_log_jacobian(depth):
    flow = perturbed(tr.init_map(jax.random.key(0), 5, 8, depth), 0.1)
    for seed in range(3):
        z = jax.random.normal(jax.random.key(seed), (5,))
        x, log_det = tr.forward(flow, WHITENING, z)
        np.testing.assert_allclose(tr.inverse(flow, WHITENING, x), z, atol=1e-12)
        jacobian = jax.jacfwd(lambda z: tr.forward(flow, WHITENING, z)[0])(z)
        np.testing.assert_allclose(log_det, np.linalg.slogdet(np.asarray(jacobian))[1],
                                   atol=1e-10)
        assert tr.invertible(flow, WHITENING, z, x)


def test_a_point_the_inverse_cannot_recover_is_not_invertible():
    flow = tr.init_map(jax.random.key(0), 5, 8, 1)
    z = jnp.ones(5)
    x, _ = tr.forward(flow, WHITENING, z)
    assert not tr.invertible(flow, WHITENING, z + 1e-6, x)


def gaussian(dim=5, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.5 * np.eye(dim)
    mean = rng.normal(size=dim)
    precision = jnp.asarray(np.linalg.inv(cov))

    def logdensity(x):
        r = x - mean
        return -0.5 * r @ precision @ r

    return mean, cov, logdensity


def test_the_untrained_kernel_is_hmc_with_the_whitening_as_mass():
    _, _, logdensity = gaussian()
    flow = tr.init_map(jax.random.key(0), 5, 8, 1)
    flow = eqx.tree_at(lambda f: f.log_step_size, flow, jnp.log(0.2))
    state = hmc.init(jnp.zeros(5), logdensity)
    latent = tr.build_kernel(logdensity)
    plain = hmc.build_kernel(logdensity)
    params = hmc.HMCParams(jnp.asarray(0.2), WHITENING.scale**2, 7)
    for seed in range(3):
        key = jax.random.key(seed)
        a, info_a = latent(key, state, flow, WHITENING, 7)
        b, info_b = plain(key, state, params)
        # x = c + s z with p_x = p_z / s: the same leapfrog, the same momentum draw.
        np.testing.assert_allclose(a.position, b.position, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(info_a.energy_error, info_b.energy_error, atol=1e-9)
        assert int(info_a.n_grad_evals) == 7


def test_exact_draws_stay_exact_under_a_bad_map():
    """Stationarity, whatever the map: exact draws moved by 20 transitions of the latent
    kernel with a random (badly fitting) map keep the target's mean and sd, to 4.5 MCSEs
    of independent draws (each walker starts from its own exact draw)."""
    mean, cov, logdensity = gaussian()
    flow = perturbed(tr.init_map(jax.random.key(0), 5, 8, 1), 0.2)
    flow = eqx.tree_at(lambda f: f.log_step_size, flow, jnp.log(0.05))
    whitening = tr.Whitening(jnp.zeros(5), jnp.ones(5))
    kernel = tr.build_kernel(logdensity)
    n = 8000
    start = jnp.asarray(np.random.default_rng(0).multivariate_normal(mean, cov, size=n))

    def move(key, x):
        state = hmc.init(x, logdensity)

        def body(s, k):
            s, info = kernel(k, s, flow, whitening, 20)
            return s, info.acceptance_rate

        state, acceptance = jax.lax.scan(body, state, jax.random.split(key, 20))
        return state.position, acceptance.mean()

    moved, acceptance = jax.jit(jax.vmap(move))(jax.random.split(jax.random.key(1), n), start)
    moved = np.asarray(moved)
    assert 0.2 < float(acceptance.mean()) < 0.99  # the map is bad but the chain moves
    assert np.abs(moved - np.asarray(start)).max() > 0.1
    sd = np.sqrt(np.diag(cov))
    z_mean = (moved.mean(0) - mean) / (sd / np.sqrt(n))
    # Var of a sample variance of normal draws: 2σ⁴/(n-1); of the sd: ≈ σ²/(2n).
    z_sd = (moved.std(0, ddof=1) - sd) / (sd / np.sqrt(2 * n))
    assert np.abs(z_mean).max() < 4.5, z_mean
    assert np.abs(z_sd).max() < 4.5, z_sd


def test_reverse_kl_is_the_kl_up_to_constants_and_leaves_out_non_finite_draws():
    mean, cov, logdensity = gaussian()
    flow = tr.init_map(jax.random.key(0), 5, 8, 1)
    whitening = tr.Whitening(jnp.asarray(mean), jnp.sqrt(jnp.diag(jnp.asarray(cov))))
    loss, kept = tr.reverse_kl(flow, jax.random.key(0), 20000, logdensity, whitening)
    assert int(kept) == 20000
    # q = N(mean, diag(cov)), p ∝ exp(logdensity): E_q[−log p] − log|S| has a closed form.
    precision = np.linalg.inv(cov)
    expected = 0.5 * np.sum(np.diag(precision) * np.diag(cov)) - np.sum(
        np.log(np.sqrt(np.diag(cov)))
    )
    np.testing.assert_allclose(loss, expected, rtol=0.02)

    def half_space(x):  # log p = -inf for half of the draws
        return jnp.where(x[0] > mean[0], logdensity(x), -jnp.inf)

    loss, kept = tr.reverse_kl(flow, jax.random.key(0), 2000, half_space, whitening)
    assert 800 < int(kept) < 1200 and np.isfinite(loss)
