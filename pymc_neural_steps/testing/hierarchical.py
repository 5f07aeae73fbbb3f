"""A centred varying-intercept model whose posterior is known by one-dimensional quadrature.

    mu ~ N(0, 5²),  tau ~ HalfNormal(5),  theta_j ~ N(mu, tau²),  y_j ~ N(theta_j, σ_j²)

for J groups with known σ_j (each y_j the mean of a group's data, as in eight schools).
Written centred (theta sampled directly), it is the funnel of applied work: the data say
little about each theta_j, so tau reaches near 0 and theta collapses onto mu there.

Integrating theta and mu out is closed form (Gaussian), leaving p(tau | y) on a fine grid:
with V_j = tau² + σ_j², mu | tau, y is Gaussian with precision P = 1/25 + Σ 1/V_j and mean
m = Σ(y_j / V_j) / P, and theta_j | mu, tau, y is y_j shrunk towards mu by σ_j² / (σ_j² + tau²).
The means and sds of every variable are quadratures over the grid (no Monte Carlo error),
and exact draws come from the grid's inverse CDF in tau, then mu, then theta.
"""

from __future__ import annotations

import numpy as np
import pymc as pm

from pymc_neural_steps.testing.references import Moments, Reference, scalar_key

__all__ = ["centered_varying_intercepts"]

# The data's seed, so the target is the same object on every machine.
_DATA_SEED = 20261206
_MU_SD = 5.0
_TAU_SCALE = 5.0
# The tau grid: [0, _TAU_MAX] in _GRID_POINTS points (p(tau | y) is negligible beyond).
_TAU_MAX = 40.0
_GRID_POINTS = 200_001


def _data(groups: int, true_tau: float):
    rng = np.random.default_rng(_DATA_SEED + groups)
    sigma = rng.uniform(1.0, 3.0, groups)
    theta = 1.0 + true_tau * rng.standard_normal(groups)
    return theta + sigma * rng.standard_normal(groups), sigma


def _tau_grid(y, sigma):
    """(tau grid, posterior weights of the grid points, m(tau), 1/P(tau))."""
    tau = np.linspace(0.0, _TAU_MAX, _GRID_POINTS)
    v = tau[:, None] ** 2 + sigma**2
    precision = 1.0 / _MU_SD**2 + np.sum(1.0 / v, axis=1)
    m = np.sum(y / v, axis=1) / precision
    log_post = (
        -0.5 * (tau / _TAU_SCALE) ** 2
        - 0.5 * np.sum(np.log(v), axis=1)
        - 0.5 * np.sum(y**2 / v, axis=1)
        + 0.5 * m**2 * precision
        - 0.5 * np.log(precision)
    )
    w = np.exp(log_post - log_post.max())
    w[[0, -1]] *= 0.5  # the trapezoid rule
    return tau, w / w.sum(), m, 1.0 / precision


def _theta_given(tau, mu_mean, mu_var, y, sigma):
    """E[theta | tau, y] and Var(theta | tau, y) (mu integrated out), shape (grid, J):
    theta_j | mu is y_j shrunk towards mu by b_j = σ_j² / (σ_j² + tau²)."""
    t2 = tau[:, None] ** 2
    shrink = sigma**2 / (sigma**2 + t2)
    mean = (1.0 - shrink) * y + shrink * mu_mean[:, None]
    var = t2 * sigma**2 / (sigma**2 + t2) + shrink**2 * mu_var[:, None]
    return mean, var


def _moments(x_mean, x_var, w) -> Moments:
    mean = np.sum(w * x_mean)
    return Moments(mean, np.sqrt(np.sum(w * (x_var + x_mean**2)) - mean**2))


def centered_varying_intercepts(groups: int = 40, true_tau: float = 0.5) -> Reference:
    """The centred model with ``groups`` groups of simulated data (σ_j uniform on [1, 3],
    the groups' true spread ``true_tau``): variables ``mu``, ``tau``, ``theta`` (J,)."""
    y, sigma = _data(groups, true_tau)
    tau, w, mu_mean, mu_var = _tau_grid(y, sigma)
    theta_mean, theta_var = _theta_given(tau, mu_mean, mu_var, y, sigma)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            mu = pm.Normal("mu", mu=0.0, sigma=_MU_SD)
            tau_ = pm.HalfNormal("tau", sigma=_TAU_SCALE)
            theta = pm.Normal("theta", mu=mu, sigma=tau_, shape=groups)
            pm.Normal("y", mu=theta, sigma=sigma, observed=y)
        return model

    def exact_draws(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        cdf = np.cumsum(w)
        index = np.minimum(np.searchsorted(cdf, rng.uniform(size=n) * cdf[-1]), tau.size - 1)
        step = tau[1] - tau[0]
        t = np.clip(tau[index] + step * (rng.uniform(size=n) - 0.5), 0.0, None)
        v = t[:, None] ** 2 + sigma**2
        precision = 1.0 / _MU_SD**2 + np.sum(1.0 / v, axis=1)
        mu = np.sum(y / v, axis=1) / precision + rng.standard_normal(n) / np.sqrt(precision)
        t2 = t[:, None] ** 2
        shrink = sigma**2 / (sigma**2 + t2)
        sd = np.sqrt(t2 * sigma**2 / (sigma**2 + t2))
        theta = (1.0 - shrink) * y + shrink * mu[:, None] + sd * rng.standard_normal((n, groups))
        return {"mu": mu, "tau": t, "theta": theta}

    moments = {"mu": _moments(mu_mean, mu_var, w), "tau": _moments(tau, np.zeros_like(tau), w)}
    for j in range(groups):
        moments[scalar_key("theta", (j,))] = _moments(theta_mean[:, j], theta_var[:, j], w)
    return Reference(
        name=f"centered_varying_intercepts_{groups}",
        build_model=build_model,
        moments=moments,
        source=(f"analytic by quadrature over tau ({_GRID_POINTS} points on [0, {_TAU_MAX:g}]); "
                f"{groups} simulated groups, seed {_DATA_SEED + groups}"),
        exact_draws=exact_draws,
    )
