"""The fixed affine maps x = c + S y in which the learned kernels run (L2HMC, EntropyFlowMC).

A warm-up estimates the posterior's centre c and covariance Σ; the networks then see
whitened coordinates y, in which the posterior is roughly N(0, I) whatever the model's
scales. ``S`` is either a vector of standard deviations (diagonal: S y = s ⊙ y) or a
lower-triangular Cholesky factor of a dense Σ (S y = L y). A dense S also undoes
correlations and rotations, which a diagonal one cannot: on a 20-d Gaussian with
eigenvalues from 1e-2 to 1e2 under a random rotation, the diagonally whitened target is
still ill-conditioned (condition number ~1e4), the densely whitened one is close to I.

The map is fixed while a chain samples, so its Jacobian log|det S| is a constant that
cancels in every MH ratio; the functions below give it for the kernels that carry it anyway.
Every function dispatches on ``scale.ndim`` (static under jit), so a kernel written with
them takes either form unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

__all__ = [
    "dense_covariance",
    "from_white",
    "grad_from_white",
    "grad_to_white",
    "log_det",
    "regularise_covariance",
    "scale_from_inverse_mass",
    "smallest_correlation_eigenvalue",
    "to_white",
]


def scale_from_inverse_mass(inverse_mass: jax.Array) -> jax.Array:
    """S from M⁻¹ = Σ: √Σ (elementwise) for a vector, cholesky(Σ) for a matrix."""
    inverse_mass = jnp.asarray(inverse_mass)
    if inverse_mass.ndim == 2:
        return jnp.linalg.cholesky(inverse_mass)
    return jnp.sqrt(inverse_mass)


def from_white(y: jax.Array, center: jax.Array, scale: jax.Array) -> jax.Array:
    """x = c + S y."""
    if scale.ndim == 2:
        return center + scale @ y
    return center + scale * y


def to_white(x: jax.Array, center: jax.Array, scale: jax.Array) -> jax.Array:
    """y = S⁻¹ (x − c)."""
    if scale.ndim == 2:
        return solve_triangular(scale, x - center, lower=True)
    return (x - center) / scale


def grad_to_white(grad_x: jax.Array, scale: jax.Array) -> jax.Array:
    """∇_y log p(c + S y) = Sᵀ ∇_x log p(x)."""
    if scale.ndim == 2:
        return scale.T @ grad_x
    return scale * grad_x


def grad_from_white(grad_y: jax.Array, scale: jax.Array) -> jax.Array:
    """∇_x = S⁻ᵀ ∇_y (the inverse of ``grad_to_white``)."""
    if scale.ndim == 2:
        return solve_triangular(scale.T, grad_y, lower=False)
    return grad_y / scale


def log_det(scale: jax.Array) -> jax.Array:
    """log|det S|."""
    if scale.ndim == 2:
        return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale))))
    return jnp.sum(jnp.log(scale))


def dense_covariance(samples: jax.Array, weights: jax.Array | None = None,
                     shrink_to_diagonal: float = 5.0) -> jax.Array:
    """A regularised dense covariance of ``samples`` (n, d), optionally weighted.

    Sample covariance Σ̂ over n effective points, shrunk towards its own diagonal with
    weight k / (n + k) (k = ``shrink_to_diagonal``), then Stan's shrinkage of the
    diagonal towards 1e-3 (weight 5 / (n + 5)): few points give (nearly) the diagonal
    estimate, many give the full matrix. Always symmetric positive definite.
    """
    samples = jnp.asarray(samples)
    n_points = samples.shape[0]
    if weights is None:
        weights = jnp.ones(n_points, samples.dtype)
    weights = weights / jnp.sum(weights)
    n_eff = 1.0 / jnp.sum(weights**2)
    mean = weights @ samples
    centred = samples - mean
    cov = (centred * weights[:, None]).T @ centred * (n_eff / jnp.maximum(n_eff - 1.0, 1.0))
    return regularise_covariance(cov, n_eff, shrink_to_diagonal)


def regularise_covariance(cov: jax.Array, count, shrink_to_diagonal: float = 5.0) -> jax.Array:
    """``dense_covariance``'s regularisation of a covariance estimated from ``count`` points:
    shrunk towards its diagonal with weight k / (n + k), then Stan's shrinkage towards 1e-3
    with weight 5 / (n + 5)."""
    keep = count / (count + shrink_to_diagonal)
    cov = keep * cov + (1.0 - keep) * jnp.diag(jnp.diagonal(cov))
    stan = count / (count + 5.0)
    return stan * cov + 1e-3 * (1.0 - stan) * jnp.eye(cov.shape[-1], dtype=cov.dtype)


def smallest_correlation_eigenvalue(diagonal_inverse_mass: jax.Array,
                                    covariance: jax.Array) -> jax.Array:
    """λ_min(D^{-1/2} Σ D^{-1/2}): the variance of the narrowest direction of a target of
    covariance Σ after the diagonal whitening D (a diagonal inverse mass matrix).

    HMC's step is limited by that direction's standard deviation, so √λ_min says how much
    larger a step a dense whitening by Σ itself affords (both learned methods start from it).
    """
    d = jnp.sqrt(diagonal_inverse_mass)
    correlation = covariance / (d[:, None] * d[None, :])
    return jnp.linalg.eigvalsh(correlation)[0]

