"""The affine whitening maps: round trips, gradients and log-determinants, both forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps import whitening as wh


def _forms(dim=4):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T + dim * np.eye(dim)
    return {"diagonal": jnp.asarray(np.diag(cov)), "dense": jnp.asarray(cov)}


@pytest.mark.parametrize("form", ["diagonal", "dense"])
def test_round_trip_gradient_and_log_det(form):
    inverse_mass = _forms()[form]
    scale = wh.scale_from_inverse_mass(inverse_mass)
    center = jnp.arange(4.0)
    x = jnp.array([0.3, -1.2, 2.0, 0.5])
    y = wh.to_white(x, center, scale)
    np.testing.assert_allclose(wh.from_white(y, center, scale), x, atol=1e-12)

    def logp(x):
        return -0.5 * jnp.sum(x**2) + jnp.sum(jnp.sin(x))

    grad_y = jax.grad(lambda y: logp(wh.from_white(y, center, scale)))(y)
    np.testing.assert_allclose(wh.grad_to_white(jax.grad(logp)(x), scale), grad_y, atol=1e-12)
    np.testing.assert_allclose(wh.grad_from_white(grad_y, scale), jax.grad(logp)(x), atol=1e-12)
    jacobian = jax.jacfwd(lambda y: wh.from_white(y, center, scale))(y)
    np.testing.assert_allclose(wh.log_det(scale), np.linalg.slogdet(jacobian)[1], atol=1e-12)


def test_dense_covariance_recovers_a_rotated_covariance_and_shrinks_few_points():
    rng = np.random.default_rng(1)
    cov = _forms(5)["dense"]
    draws = rng.multivariate_normal(np.zeros(5), cov, size=20_000)
    estimate = wh.dense_covariance(jnp.asarray(draws))
    np.testing.assert_allclose(estimate, cov, rtol=0.05, atol=0.05 * float(jnp.max(cov)))
    # Three points: nearly diagonal (shrunk), and still positive definite.
    few = wh.dense_covariance(jnp.asarray(draws[:3]))
    assert np.all(np.linalg.eigvalsh(np.asarray(few)) > 0)
    off = np.abs(np.asarray(few) - np.diag(np.diagonal(few))).max()
    assert off < 0.5 * np.abs(np.asarray(wh.dense_covariance(jnp.asarray(draws[:3]), shrink_to_diagonal=0.0))
                               - np.diag(np.diagonal(few))).max() + 1e-12


def test_smallest_correlation_eigenvalue_is_the_narrowest_variance_after_diagonal_whitening():
    # Two coordinates of sds 10 and 0.1, correlation 0.99: after dividing by the sds the
    # covariance is [[1, .99], [.99, 1]], whose smallest eigenvalue is 0.01.
    sds = np.array([10.0, 0.1])
    covariance = np.array([[1.0, 0.99], [0.99, 1.0]]) * np.outer(sds, sds)
    value = wh.smallest_correlation_eigenvalue(jnp.asarray(sds**2), jnp.asarray(covariance))
    np.testing.assert_allclose(value, 0.01, rtol=1e-10)
    # Uncorrelated: nothing to gain from a dense whitening.
    np.testing.assert_allclose(
        wh.smallest_correlation_eigenvalue(jnp.asarray(sds**2), jnp.diag(jnp.asarray(sds**2))), 1.0
    )
