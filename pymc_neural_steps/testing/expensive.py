"""Targets whose gradient is expensive: the models NNgHMC is for (issue 3, ``algorithms.md`` §1).

Three simulated posteriors, each with a fixed data seed so every run samples the same one,
in the sizes of Li et al. (2019):

* :func:`gp_regression` -- Gaussian-process regression with a Matérn ν = 3/2 kernel on 500
  points in 4-d; length scale, signal variance and noise variance free. The marginal
  likelihood needs a 500 × 500 Cholesky factorisation per density, and its gradient a few
  more O(n³) operations.
* :func:`logistic_regression_50k` -- Bayesian logistic regression, 50,000 rows × 200
  features: two 10⁷-flop matrix-vector products per gradient.
* :func:`garch21` -- GARCH(2,1) on 1,000 observations: a sequential variance recursion
  (``pytensor.scan``) that no vectorisation removes.

None of them has a published or analytic posterior, and a long NUTS run to make one is not
cheap (minutes to hours here), so their ``Reference`` carries no moments: the benchmark
times them and reports ESS, and checks nothing against a reference (``max|z|`` is NaN).
Each factory also takes size arguments, so that tests can build a small version of the
same model in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt

from pymc_neural_steps.testing.references import Reference

__all__ = ["garch21", "gp_regression", "logistic_regression_50k"]

_NO_REFERENCE = "simulated data (seed {seed}); no reference posterior (timing target)"


# --- Gaussian process ------------------------------------------------------------------------

GP_SEED = 20190301
GP_TRUE = dict(length_scale=0.8, signal_variance=1.0, noise_variance=0.1)


def _gp_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs uniform on [0, 1]^dim and one draw of the GP at ``GP_TRUE`` plus noise.

    Returns the n × n matrix of Euclidean distances (all the model needs of the inputs) and y.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(n, dim))
    distance = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    cov = _matern32(distance, GP_TRUE["length_scale"], GP_TRUE["signal_variance"], np)
    cov[np.diag_indices(n)] += GP_TRUE["noise_variance"]
    y = np.linalg.cholesky(cov) @ rng.standard_normal(n)
    return distance, y


def _matern32(distance, length_scale, signal_variance, xp):
    """k(r) = η² (1 + √3 r/ℓ) exp(−√3 r/ℓ) (Rasmussen & Williams 2006, eq. 4.17)."""
    scaled = np.sqrt(3.0) * distance / length_scale
    return signal_variance * (1.0 + scaled) * xp.exp(-scaled)


def gp_regression(n: int = 500, dim: int = 4, *, seed: int = GP_SEED) -> Reference:
    """GP regression, Matérn ν = 3/2, ``n`` points in ``dim``-d, marginal likelihood.

    ℓ ~ InverseGamma(3, 2) (length scale; keeps ℓ away from 0 and from far beyond the
    unit cube's diameter), η² ~ HalfNormal(2) (signal variance), σ² ~ HalfNormal(1) (noise
    variance); y ~ N(0, K + σ² I), K_ij = k(‖x_i − x_j‖) with the Matérn 3/2 kernel. The
    distances are data: the inputs themselves are fixed. Simulated at ℓ = 0.8, η² = 1,
    σ² = 0.1. Each log density factorises the n × n covariance (PyMC's ``MvNormal``).
    """
    distance, y = _gp_data(n, dim, seed)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            length_scale = pm.InverseGamma("length_scale", alpha=3.0, beta=2.0)
            signal_variance = pm.HalfNormal("signal_variance", sigma=2.0)
            noise_variance = pm.HalfNormal("noise_variance", sigma=1.0)
            cov = _matern32(pt.as_tensor(distance), length_scale, signal_variance, pt)
            cov = cov + noise_variance * pt.eye(n)
            pm.MvNormal("y", mu=pt.zeros(n), cov=cov, observed=y)
        return model

    return Reference(
        name="gp_regression",
        build_model=build_model,
        moments={},
        source=f"GP regression, Matérn 3/2, {n} x {dim} inputs; " + _NO_REFERENCE.format(seed=seed),
    )


# --- logistic regression -----------------------------------------------------------------------

LOGISTIC_SEED = 20190302


def _logistic_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features))
    # Coefficients of sd 1/√features keep the logits O(1) whatever the number of features,
    # so the data are neither separable nor uninformative.
    beta = rng.standard_normal(features) / np.sqrt(features)
    y = (rng.uniform(size=rows) < 1.0 / (1.0 + np.exp(-(x @ beta)))).astype(np.int64)
    return x, y


def logistic_regression_50k(rows: int = 50_000, features: int = 200, *, seed: int = LOGISTIC_SEED) -> Reference:
    """Bayesian logistic regression on ``rows`` × ``features`` simulated data.

    β ~ N(0, 1)^features, y_i ~ Bernoulli(logistic(x_i · β)), x_i ~ N(0, I), the true β
    drawn as N(0, 1/features). No intercept. Variable ``beta`` of shape (features,).
    """
    x, y = _logistic_data(rows, features, seed)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            beta = pm.Normal("beta", mu=0.0, sigma=1.0, shape=features)
            pm.Bernoulli("y", logit_p=pt.dot(x, beta), observed=y)
        return model

    return Reference(
        name="logistic_regression_50k",
        build_model=build_model,
        moments={},
        source=f"logistic regression, {rows} x {features}; " + _NO_REFERENCE.format(seed=seed),
    )


# --- GARCH(2,1) -------------------------------------------------------------------------------

GARCH_SEED = 20190303
GARCH_TRUE = dict(mu=0.05, omega=0.1, alpha1=0.15, beta1=0.45, beta2=0.3)
GARCH_BURN_IN = 500


def _garch_data(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = GARCH_TRUE
    total = length + GARCH_BURN_IN
    y = np.zeros(total)
    variance = np.full(total, p["omega"] / (1.0 - p["alpha1"] - p["beta1"] - p["beta2"]))
    for t in range(2, total):
        variance[t] = (
            p["omega"]
            + p["alpha1"] * (y[t - 1] - p["mu"]) ** 2
            + p["beta1"] * variance[t - 1]
            + p["beta2"] * variance[t - 2]
        )
        y[t] = p["mu"] + np.sqrt(variance[t]) * rng.standard_normal()
    return y[GARCH_BURN_IN:]


def _garch21_variance_step(shock, variance_1, variance_2, beta1, beta2):
    """σ²_t = (ω + α₁ ε²_{t−1}) + β₁ σ²_{t−1} + β₂ σ²_{t−2}."""
    return shock + beta1 * variance_1 + beta2 * variance_2


def garch21(length: int = 1000, *, seed: int = GARCH_SEED) -> Reference:
    """GARCH(2,1) on ``length`` simulated observations (two variance lags, one shock lag).

    σ²_t = ω + α₁ (y_{t−1} − μ)² + β₁ σ²_{t−1} + β₂ σ²_{t−2}, y_t ~ N(μ, σ_t) for t ≥ 3,
    σ²_1 = σ²_2 = the sample variance of y (fixed). Priors: μ ~ N(0, 1), ω ~ HalfNormal(1),
    and (α₁, β₁, β₂, 1 − α₁ − β₁ − β₂) ~ Dirichlet(1, 1, 1, 1), i.e. uniform on the
    covariance-stationary region α₁ + β₁ + β₂ < 1 (variable ``persistence``; its first
    three entries are α₁, β₁, β₂). Simulated at μ = 0.05, ω = 0.1, α₁ = 0.15, β₁ = 0.45,
    β₂ = 0.3. The recursion is a ``pytensor.scan`` (as in :func:`garch11`), sequential in t.
    """
    y = _garch_data(length, seed)
    start = float(np.var(y))

    def build_model() -> pm.Model:
        with pm.Model() as model:
            mu = pm.Normal("mu", mu=0.0, sigma=1.0)
            omega = pm.HalfNormal("omega", sigma=1.0)
            weights = pm.Dirichlet("persistence", a=np.ones(4))
            alpha1, beta1, beta2 = weights[0], weights[1], weights[2]
            shock = omega + alpha1 * (y[1:-1] - mu) ** 2  # enters σ²_t for t = 3..T
            variance = pytensor.scan(
                _garch21_variance_step,
                sequences=[shock],
                outputs_info=[{"initial": pt.as_tensor(np.array([start, start])), "taps": [-1, -2]}],
                non_sequences=[beta1, beta2],
                return_updates=False,
            )
            pm.Normal("y", mu=mu, sigma=pt.sqrt(variance), observed=y[2:])
        return model

    return Reference(
        name="garch21",
        build_model=build_model,
        moments={},
        source=f"GARCH(2,1), T = {length}; " + _NO_REFERENCE.format(seed=seed),
    )
