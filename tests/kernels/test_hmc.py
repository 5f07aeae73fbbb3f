"""The HMC kernel: reversibility, exactness with any gradient field, honest counts."""

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps.kernels import hmc

jax.config.update("jax_enable_x64", True)

COV = np.array([[2.0, 1.2], [1.2, 1.0]])
PREC = np.linalg.inv(COV)


def logdensity(x):
    return -0.5 * x @ PREC @ x


def test_leapfrog_is_reversible_for_any_field():
    def field(x):  # not the gradient of anything in particular
        return jnp.zeros(()), jnp.sin(3.0 * x) - x**3

    x0, p0 = jnp.array([0.3, -0.7]), jnp.array([1.1, 0.4])
    inverse_mass = jnp.array([0.5, 2.0])
    x1, p1, g1, _ = hmc.leapfrog(field, x0, p0, field(x0)[1], 0.1, inverse_mass, 25)
    x2, p2, _, _ = hmc.leapfrog(field, x1, -p1, g1, 0.1, inverse_mass, 25)
    np.testing.assert_allclose(x2, x0, atol=1e-12)
    np.testing.assert_allclose(-p2, p0, atol=1e-12)


def run_chains(kernel, params, init_fn, n_draws=4000, n_chains=8, seed=0):
    def one_chain(key):
        def body(state, k):
            state, info = kernel(k, state, params)
            return state, (state.position, info)

        return jax.lax.scan(body, init_fn(jnp.zeros(2)), jax.random.split(key, n_draws))[1]

    keys = jax.random.split(jax.random.key(seed), n_chains)
    return jax.jit(jax.vmap(one_chain))(keys)


def batch_means_z(draws, truth):
    """z-scores of the per-chain means pooled over chains (independent chains)."""
    chain_means = draws.mean(axis=1)
    se = chain_means.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    return (chain_means.mean(axis=0) - truth) / se


def test_wrong_gradient_field_still_samples_the_target():
    # A surrogate that is badly wrong (ignores the correlation, wrong scale).
    def surrogate(x):
        return -1.7 * x

    kernel = hmc.build_kernel(logdensity, gradient_fn=surrogate)
    params = hmc.HMCParams(0.35, jnp.ones(2), 8)
    positions, info = run_chains(kernel, params, lambda x: hmc.init(x, logdensity, surrogate), n_chains=16)
    positions = np.asarray(positions)
    assert 0.2 < float(info.acceptance_rate.mean()) < 0.95
    assert np.abs(batch_means_z(positions, np.zeros(2))).max() < 4
    second_moments = positions**2
    assert np.abs(batch_means_z(second_moments, np.diag(COV))).max() < 4
    assert int(info.n_grad_evals.sum()) == 0
    assert (np.asarray(info.n_field_evals) == 8).all()
    assert (np.asarray(info.n_logp_evals) == 1).all()


def test_biased_dynamics_are_caught_by_the_same_check():
    # Sanity check of the check: the leapfrog without the MH test is biased at this step.
    kernel = hmc.build_kernel(logdensity)
    params = hmc.HMCParams(0.6, jnp.ones(2), 3)

    def no_mh(key, state, params):
        key_p, _ = jax.random.split(key)
        p = hmc.sample_momentum(key_p, params.inverse_mass)
        field = jax.value_and_grad(logdensity)
        x, _, g, lp = hmc.leapfrog(field, state.position, p, state.gradient, params.step_size,
                                   params.inverse_mass, params.num_steps, state.logdensity)
        return hmc.HMCState(x, lp, g), None

    positions, _ = run_chains(no_mh, params, lambda x: hmc.init(x, logdensity), n_chains=16)
    assert np.abs(batch_means_z(np.asarray(positions) ** 2, np.diag(COV))).max() > 4
    # ... while the exact kernel passes at the same settings.
    positions, info = run_chains(kernel, params, lambda x: hmc.init(x, logdensity), n_chains=16)
    assert np.abs(batch_means_z(np.asarray(positions) ** 2, np.diag(COV))).max() < 4
    assert (np.asarray(info.n_grad_evals) == 3).all()


def test_non_finite_field_is_rejected_not_accepted():
    def broken(x):
        return jnp.full_like(x, jnp.nan)

    kernel = jax.jit(hmc.build_kernel(logdensity, gradient_fn=broken))
    state = hmc.init(jnp.array([0.5, 0.5]), logdensity, lambda x: -x)
    new_state, info = kernel(jax.random.key(0), state, hmc.HMCParams(0.1, jnp.ones(2), 5))
    assert not bool(info.is_accepted)
    assert float(info.acceptance_rate) == 0.0
    np.testing.assert_array_equal(new_state.position, state.position)
