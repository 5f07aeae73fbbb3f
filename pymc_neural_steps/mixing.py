"""How fast a kernel mixes, from short runs of many walkers: effective sample size per
transition in the worst direction.

A pilot runs a kernel for ``n`` transitions from each of ``w`` starting points drawn from
(close to) the posterior. The walkers' positions together estimate the posterior's mean
and variance, so the autocorrelation at lag k is the pooled mean of (z_t − μ)(z_{t+k} − μ)
over walkers and times, divided by the pooled variance: no single run needs to be long.
The integrated autocorrelation time τ is summed with Geyer's initial monotone sequence
(Geyer 1992, §3.3; as Stan computes ESS), and ESS per transition is 1/τ.

A kernel whose autocorrelation has not died out within the pilot is *unresolved*: its τ
is at least the pilot's length and the estimate is only an upper bound on its ESS.

"Worst direction": the minimum over the principal directions of the walkers' covariance
(the directions a slow kernel is slow in: the long axis of a correlated posterior) and
the log density (the energy level: the neck of a funnel, the tails).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "MixingEstimate",
    "autocorrelation",
    "ess_per_step",
    "principal_directions",
    "worst_direction",
]


class MixingEstimate(NamedTuple):
    ess_per_step: jax.Array  # 1/τ, in the worst direction
    resolved: jax.Array  # bool: the autocorrelations summed to a truncation in every direction


def autocorrelation(z: jax.Array) -> jax.Array:
    """ρ_k for k = 0..n−1 of ``z`` (walkers, n), centred and scaled by the pooled mean
    and variance of all walkers (ρ_0 = 1)."""
    walkers, n = z.shape
    centred = z - jnp.mean(z)
    variance = jnp.mean(centred**2)
    # Every lag at once: the walker-summed products c_t c_s, added up along each diagonal
    # s − t = k. Pilots are short (tens of steps), so the n × n products cost nothing, and
    # unlike an FFT this lowers on every backend whatever the layout of a sharded batch.
    products = centred.T @ centred
    lag = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]
    lagged = jnp.zeros(n, z.dtype).at[jnp.where(lag >= 0, lag, n)].add(products, mode="drop")
    pairs = walkers * (n - jnp.arange(n))  # the (t, t + k) pairs each lag averages
    autocovariance = lagged / pairs
    return autocovariance / jnp.where(variance > 0, variance, 1.0)


def ess_per_step(z: jax.Array) -> MixingEstimate:
    """ESS per transition of the walkers' series ``z`` (walkers, n): 1/τ with τ = −1 + 2
    Σ_m P_m, P_m = ρ_{2m} + ρ_{2m+1} summed while positive and made non-increasing.
    A constant series (no spread at all) gets 0."""
    n = z.shape[1] - z.shape[1] % 2
    rho = autocorrelation(z)[:n]
    pairs = rho[0::2] + rho[1::2]
    positive = jnp.cumprod(pairs > 0).astype(bool)
    monotone = jax.lax.cummin(jnp.where(positive, pairs, 0.0))
    tau = -1.0 + 2.0 * jnp.sum(jnp.where(positive, monotone, 0.0))
    # Antithetic kernels can make τ < 1; Stan bounds it by 1/log10(N) from below.
    samples = z.size
    tau = jnp.maximum(tau, 1.0 / jnp.log10(jnp.maximum(samples, 10.0)))
    spread = jnp.var(z) > 0
    resolved = spread & ~positive[-1]
    return MixingEstimate(jnp.where(spread, 1.0 / tau, 0.0), resolved)


def worst_direction(draws: jax.Array, logdensity: jax.Array, directions: jax.Array
                    ) -> MixingEstimate:
    """The slowest of the projections of ``draws`` (walkers, n, d) on the columns of
    ``directions`` (d, k) and of ``logdensity`` (walkers, n)."""
    projected = jnp.einsum("wnd,dk->kwn", draws, directions)
    series = jnp.concatenate([projected, logdensity[None]], axis=0)
    each = jax.vmap(ess_per_step)(series)
    return MixingEstimate(jnp.min(each.ess_per_step), jnp.all(each.resolved))


def principal_directions(points: jax.Array) -> jax.Array:
    """Directions (d, d) whose projections are the principal components of ``points``
    (m, d) after each coordinate is scaled to unit variance: the eigenvectors of their
    correlation matrix, divided by the coordinates' standard deviations (scale-free; a
    constant coordinate is left unscaled)."""
    centred = points - jnp.mean(points, axis=0)
    sd = jnp.sqrt(jnp.mean(centred**2, axis=0))
    sd = jnp.where(sd > 0, sd, 1.0)
    standard = centred / sd
    correlation = standard.T @ standard / points.shape[0]
    _, vectors = jnp.linalg.eigh(correlation)
    return vectors / sd[:, None]
