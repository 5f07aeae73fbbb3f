"""Targets whose posterior moments are known in closed form.

The geometry benchmarks of the L2HMC paper (Levy, Hoffman & Sohl-Dickstein, ICLR 2018, §5)
and of the proposal-entropy paper (Li, Chen & Sommer, 2021, §5): strongly correlated,
ill-conditioned and rotated Gaussians and Neal's funnel; the banana of the NNgHMC paper
(Li, Holbrook, Shahbaba & Baldi, 2019); a dense correlated Gaussian; and a model of
independent closed-form blocks that exercises PyMC's transforms, a Deterministic, an observed
variable and a ``pm.Data`` container.

Every reference here has MCSE 0 and an exact sampler (``Reference.exact_draws``), so the
moments can be checked independently of any MCMC method.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from pymc_neural_steps.testing.references import Moments, Reference, scalar_key

__all__ = [
    "banana",
    "calendar_year_regression",
    "constrained",
    "correlated_gaussian",
    "funnel",
    "ill_conditioned_gaussian",
    "rotated_gaussian",
    "strongly_correlated_gaussian",
]

# Fixed seeds for the random rotations, so a target is the same object on every machine.
_CORRELATED_SEED = 20180430
_ROTATED_SEED = 20210301


def _vector_moments(name: str, mean: np.ndarray, sd: np.ndarray) -> dict[str, Moments]:
    return {scalar_key(name, (i,)): Moments(m, s) for i, (m, s) in enumerate(zip(mean, sd, strict=True))}


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _gaussian(name: str, mean: np.ndarray, cov: np.ndarray, source: str) -> Reference:
    """A single MvNormal vector variable ``x`` with the given mean and covariance."""
    mean = np.asarray(mean, dtype=float)
    cov = np.asarray(cov, dtype=float)
    chol = np.linalg.cholesky(cov)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            pm.MvNormal("x", mu=mean, chol=chol)
        return model

    def exact_draws(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"x": mean + rng.standard_normal((n, mean.size)) @ chol.T}

    return Reference(
        name=name,
        build_model=build_model,
        moments=_vector_moments("x", mean, np.sqrt(np.diag(cov))),
        source=source,
        exact_draws=exact_draws,
    )


def correlated_gaussian(d: int = 10) -> Reference:
    """Dense Gaussian in ``d`` dimensions, condition number 100, not aligned with the axes.

    Covariance Q diag(λ) Qᵀ with λ log-spaced in [0.1, 10] and Q a fixed random rotation;
    the mean is a fixed random vector (so a sampler that drifts to the origin is caught).
    Variable: ``x`` of shape (d,).
    """
    rng = np.random.default_rng(_CORRELATED_SEED + d)
    rotation = _random_rotation(rng, d)
    cov = (rotation * np.logspace(-1, 1, d)) @ rotation.T
    mean = rng.normal(0.0, 1.0, size=d)
    return _gaussian(
        f"correlated_gaussian_{d}",
        mean,
        cov,
        source=f"analytic: MvNormal, eigenvalues logspace(-1, 1, {d}), rotation from seed {_CORRELATED_SEED + d}",
    )


def strongly_correlated_gaussian() -> Reference:
    """L2HMC's 2-d strongly correlated Gaussian: variances 1e2 and 1e-1, rotated by π/4.

    Both marginals have variance (100 + 0.1) / 2; the correlation is 0.998. Variable ``x``.
    """
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rotation = np.array([[c, -s], [s, c]])
    cov = (rotation * np.array([1e2, 1e-1])) @ rotation.T
    return _gaussian(
        "strongly_correlated_gaussian",
        np.zeros(2),
        cov,
        source="analytic: L2HMC (Levy et al. 2018) SCG, variances [1e2, 1e-1] rotated by pi/4",
    )


def ill_conditioned_gaussian(d: int = 50) -> Reference:
    """L2HMC's ill-conditioned Gaussian: independent, variances log-spaced in [1e-2, 1e2].

    Axis-aligned, so a diagonal mass matrix solves it; it tests step-size adaptation and
    the networks' per-coordinate scaling. Variable ``x`` of shape (d,).
    """
    variances = np.logspace(-2, 2, d)
    mean = np.zeros(d)
    sd = np.sqrt(variances)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            pm.Normal("x", mu=0.0, sigma=sd, shape=d)
        return model

    def exact_draws(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((n, d)) * sd}

    return Reference(
        name=f"ill_conditioned_gaussian_{d}",
        build_model=build_model,
        moments=_vector_moments("x", mean, sd),
        source=f"analytic: L2HMC (Levy et al. 2018) ICG, diagonal variances logspace(-2, 2, {d})",
        exact_draws=exact_draws,
    )


def rotated_gaussian(d: int = 20) -> Reference:
    """Ill-conditioned Gaussian turned by a fixed random rotation, so no diagonal mass matrix helps.

    Eigenvalues (variances) log-spaced in [1e-2, 1e2], condition number 1e4; mean 0.
    Variable ``x`` of shape (d,).
    """
    rng = np.random.default_rng(_ROTATED_SEED + d)
    rotation = _random_rotation(rng, d)
    cov = (rotation * np.logspace(-2, 2, d)) @ rotation.T
    return _gaussian(
        f"rotated_gaussian_{d}",
        np.zeros(d),
        cov,
        source=f"analytic: eigenvalues logspace(-2, 2, {d}), rotation from seed {_ROTATED_SEED + d}",
    )


def funnel(d: int = 20, sigma: float = 3.0) -> Reference:
    """Neal's funnel in ``d`` dimensions: v ~ N(0, σ²), x_i | v ~ N(0, e^v), i = 1..d-1.

    Variables ``v`` (scalar, the neck) and ``x`` of shape (d-1,); the centred form, which is
    the hard one. Marginally E[x_i] = 0 and Var(x_i) = E[e^v] = exp(σ²/2), so
    sd(x_i) = exp(σ²/4) (9.49 for σ = 3).

    The x_i are heavy-tailed, kurtosis 3 exp(σ²): 8 for σ = 1 but 2.4e4 for σ = 3, where the
    relative error of a sample variance from n independent draws is ≈ 160/√n and the
    sample's own MCSE estimate (built from sample moments that miss the rare huge draws) is
    far too small. For σ > 1 their sd is therefore recorded with ``check_sd=False``: the
    check tests the means of x and the mean and sd of ``v``, which carries the funnel's
    difficulty (the neck, v ≪ 0, is what samplers fail to reach). PyMC's NUTS passes
    ``funnel(sigma=1)`` with ``target_accept=0.95`` (at the default 0.8 it can mix too
    slowly in v to pass) and, as expected, is refused on ``funnel(sigma=3)`` (divergences,
    R-hat ≈ 1.2–1.6, ESS of v < 30 with 2 × 2000 draws).
    """
    if d < 2:
        raise ValueError("the funnel needs d >= 2")
    sigma = float(sigma)
    x_sd = np.exp(sigma**2 / 4)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            v = pm.Normal("v", mu=0.0, sigma=sigma)
            pm.Normal("x", mu=0.0, sigma=pt.exp(v / 2), shape=d - 1)
        return model

    def exact_draws(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        v = rng.normal(0.0, sigma, size=n)
        return {"v": v, "x": rng.standard_normal((n, d - 1)) * np.exp(v / 2)[:, None]}

    moments = {"v": Moments(0.0, sigma)}
    moments |= {scalar_key("x", (i,)): Moments(0.0, x_sd, check_sd=sigma <= 1.0) for i in range(d - 1)}
    return Reference(
        name=f"funnel_{d}",
        build_model=build_model,
        moments=moments,
        source=f"analytic: Neal (2003) funnel, sigma={sigma}; sd(x_i) = exp(sigma^2/4)",
        exact_draws=exact_draws,
    )


def banana(a: float = 1.0, b: float = 0.1, c: float = 1.0) -> Reference:
    """2-d banana (Rosenbrock) density: log p(x) = -[(a - x₁)² + b (x₂ - x₁²)²] / c + const.

    The density factorises as x₁ ~ N(a, c/2) and x₂ | x₁ ~ N(x₁², c/(2b)), so with s² = c/2:
    E[x₁] = a, sd(x₁) = s, E[x₂] = a² + s², Var(x₂) = c/(2b) + 2s⁴ + 4a²s²
    (for the defaults: means 1 and 1.5, sds 0.7071 and 2.7386). Variable ``x`` of shape (2,),
    a flat ``pm.Flat`` vector with the density as a ``pm.Potential``.

    The defaults a = 1, b = 0.1, c = 1 are the (A, B, C) quoted for the banana of the NNgHMC
    paper. Its formula was not available when this was written; the Rosenbrock form above is
    our reading of those three constants. Check it against the paper before comparing with
    the paper's numbers.
    """
    a, b, c = float(a), float(b), float(c)
    s2 = c / 2
    cond_var = c / (2 * b)
    mean = np.array([a, a**2 + s2])
    sd = np.sqrt([s2, cond_var + 2 * s2**2 + 4 * a**2 * s2])

    def build_model() -> pm.Model:
        with pm.Model() as model:
            x = pm.Flat("x", shape=2)
            pm.Potential("banana", -((a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2) / c)
        return model

    def exact_draws(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        x1 = rng.normal(a, np.sqrt(s2), size=n)
        x2 = rng.normal(x1**2, np.sqrt(cond_var))
        return {"x": np.stack([x1, x2], axis=1)}

    return Reference(
        name="banana",
        build_model=build_model,
        moments=_vector_moments("x", mean, sd),
        source=f"analytic: Rosenbrock banana a={a}, b={b}, c={c}",
        exact_draws=exact_draws,
    )


# constrained(): fixed parameters of its independent blocks.
_LOGNORMAL_MU, _LOGNORMAL_SIGMA = 0.3, 0.5
_BETA_ALPHA = np.array([2.0, 0.8, 5.0])
_BETA_BETA = np.array([3.0, 0.9, 1.5])
_UNIFORM_LOWER, _UNIFORM_UPPER = -1.0, 3.0
_DIRICHLET_A = np.array([1.0, 2.0, 3.0, 4.0])
_GAMMA_ALPHA = np.array([[2.0, 3.0], [4.0, 5.0]])
_GAMMA_BETA = 2.0
_LOC_PRIOR_MU, _LOC_PRIOR_SD, _NOISE_SD = 1.0, 2.0, 0.8
_OBSERVATIONS = np.array([0.3, 1.9, 1.2, 0.7, 2.4])


def calendar_year_regression(n: int = 200, noise: float = 0.5) -> Reference:
    """A straight line through ``n`` points against an uncentred predictor (calendar years
    1950-2020), noise sd known: a posterior no one tuned for, as a user writes it.

    y ~ N(a + b·year, noise²), a ~ N(0, 50²), b ~ N(0, 1). Intercept and slope are
    correlated beyond −0.999 and their scales differ ~2,000-fold: a diagonal mass matrix
    cannot whiten it, the first U-turn comes after a half-oscillation across the narrow
    direction. The posterior is Gaussian (conjugate). Variables ``a`` and ``b``.
    """
    rng = np.random.default_rng(7)
    year = rng.uniform(1950.0, 2020.0, n)
    y = 3.0 + 0.02 * (year - 1985.0) + rng.normal(0.0, noise, n)
    design = np.column_stack([np.ones(n), year])
    precision = design.T @ design / noise**2 + np.diag([1 / 50.0**2, 1.0])
    cov = np.linalg.inv(precision)
    mean = cov @ design.T @ y / noise**2
    chol = np.linalg.cholesky(cov)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            a = pm.Normal("a", 0.0, 50.0)
            b = pm.Normal("b", 0.0, 1.0)
            pm.Normal("y", a + b * year, noise, observed=y)
        return model

    def exact_draws(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
        draws = mean + rng.standard_normal((size, 2)) @ chol.T
        return {"a": draws[:, 0], "b": draws[:, 1]}

    sd = np.sqrt(np.diag(cov))
    return Reference(
        name="calendar_year_regression",
        build_model=build_model,
        moments={"a": Moments(mean[0], sd[0]), "b": Moments(mean[1], sd[1])},
        source="analytic: conjugate Gaussian linear regression, known noise, seed 7",
        exact_draws=exact_draws,
    )


def _conjugate_normal_posterior() -> tuple[float, float]:
    precision = 1 / _LOC_PRIOR_SD**2 + _OBSERVATIONS.size / _NOISE_SD**2
    mean = (_LOC_PRIOR_MU / _LOC_PRIOR_SD**2 + _OBSERVATIONS.sum() / _NOISE_SD**2) / precision
    return mean, precision**-0.5


def constrained() -> Reference:
    """Independent blocks, each with a closed-form posterior, one per kind of PyMC transform.

    ========== ============================================ =========== ========
    variable   distribution                                 transform   shape
    ========== ============================================ =========== ========
    scale      LogNormal(0.3, 0.5)                          log         ()
    log_scale  Deterministic log(scale) ~ N(0.3, 0.5)       —           ()
    prob       Beta([2, 0.8, 5], [3, 0.9, 1.5])             logodds     (3,)
    offset     Uniform(-1, 3)                               interval    ()
    weights    Dirichlet([1, 2, 3, 4]), dims "component"    simplex     (4,)
    rate       Gamma([[2, 3], [4, 5]], 2)                   log         (2, 2)
    loc        N(1, 2²) prior, 5 observations N(loc, 0.8²)   none        ()
    ========== ============================================ =========== ========

    The observations of ``loc`` live in a ``pm.Data`` container ``y_obs``, so the model has
    a data node, an observed variable, a Deterministic and a named dimension to carry
    through a PyMC→JAX bridge.
    """
    loc_mean, loc_sd = _conjugate_normal_posterior()

    def build_model() -> pm.Model:
        with pm.Model(coords={"component": ["a", "b", "c", "d"]}) as model:
            scale = pm.LogNormal("scale", mu=_LOGNORMAL_MU, sigma=_LOGNORMAL_SIGMA)
            pm.Deterministic("log_scale", pt.log(scale))
            pm.Beta("prob", alpha=_BETA_ALPHA, beta=_BETA_BETA)
            pm.Uniform("offset", lower=_UNIFORM_LOWER, upper=_UNIFORM_UPPER)
            pm.Dirichlet("weights", a=_DIRICHLET_A, dims="component")
            pm.Gamma("rate", alpha=_GAMMA_ALPHA, beta=_GAMMA_BETA)
            loc = pm.Normal("loc", mu=_LOC_PRIOR_MU, sigma=_LOC_PRIOR_SD)
            y_obs = pm.Data("y_obs", _OBSERVATIONS)
            pm.Normal("y", mu=loc, sigma=_NOISE_SD, observed=y_obs)
        return model

    def exact_draws(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        scale = rng.lognormal(_LOGNORMAL_MU, _LOGNORMAL_SIGMA, size=n)
        return {
            "scale": scale,
            "log_scale": np.log(scale),
            "prob": rng.beta(_BETA_ALPHA, _BETA_BETA, size=(n, 3)),
            "offset": rng.uniform(_UNIFORM_LOWER, _UNIFORM_UPPER, size=n),
            "weights": rng.dirichlet(_DIRICHLET_A, size=n),
            "rate": rng.gamma(_GAMMA_ALPHA, 1 / _GAMMA_BETA, size=(n, 2, 2)),
            "loc": rng.normal(loc_mean, loc_sd, size=n),
        }

    s2 = _LOGNORMAL_SIGMA**2
    moments = {
        "scale": Moments(np.exp(_LOGNORMAL_MU + s2 / 2), np.sqrt(np.expm1(s2) * np.exp(2 * _LOGNORMAL_MU + s2))),
        "log_scale": Moments(_LOGNORMAL_MU, _LOGNORMAL_SIGMA),
    }
    ab = _BETA_ALPHA + _BETA_BETA
    moments |= _vector_moments("prob", _BETA_ALPHA / ab, np.sqrt(_BETA_ALPHA * _BETA_BETA / (ab**2 * (ab + 1))))
    moments["offset"] = Moments((_UNIFORM_LOWER + _UNIFORM_UPPER) / 2, (_UNIFORM_UPPER - _UNIFORM_LOWER) / np.sqrt(12))
    a0 = _DIRICHLET_A.sum()
    moments |= _vector_moments(
        "weights", _DIRICHLET_A / a0, np.sqrt(_DIRICHLET_A * (a0 - _DIRICHLET_A) / (a0**2 * (a0 + 1)))
    )
    for index in np.ndindex(_GAMMA_ALPHA.shape):
        alpha = _GAMMA_ALPHA[index]
        moments[scalar_key("rate", index)] = Moments(alpha / _GAMMA_BETA, np.sqrt(alpha) / _GAMMA_BETA)
    moments["loc"] = Moments(loc_mean, loc_sd)
    return Reference(
        name="constrained",
        build_model=build_model,
        moments=moments,
        source="analytic: textbook moments of LogNormal, Beta, Uniform, Dirichlet, Gamma; "
        "conjugate Normal posterior for loc",
        exact_draws=exact_draws,
    )
