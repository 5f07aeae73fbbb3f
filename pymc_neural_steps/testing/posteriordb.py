"""posteriordb posteriors with Stan reference draws, as PyMC models.

posteriordb (stan-dev/posteriordb, BSD-3-Clause) pairs Stan programs with data and long Stan
NUTS reference runs (10 chains x 1000 thinned draws). Thirteen of them live here: the three
the papers' benchmarks use (eight schools non-centred, GARCH(1,1), AR(5)) and the robustness
suite of issue 14 (regressions on raw and centred scales, a GP, two hidden Markov models, the
centred eight schools). ``data/README.md`` says where every file comes from.

Every model is our own transcription of the Stan program shipped next to its data
(``data/<posterior>/model.stan``); ``tests/testing/test_posteriordb.py`` checks each log
density against a NumPy transcription of the Stan program, and the slow tests check each
against its reference with PyMC's NUTS. Stan's implicit priors carry over as they are: a
parameter without a ``~`` statement gets ``pm.Flat`` (``pm.HalfFlat`` when bounded below), a
simplex without one a uniform ``Dirichlet``.

The reference mean and sd are those of the reference draws, with ArviZ's MCSE of the mean
and of the sd on the same draws, so both errors are on the footing of the estimates they
are compared with. Keys are 0-based (posteriordb's ``theta[1]`` is ``theta[0]`` here).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from pymc_neural_steps.testing import _posterior
from pymc_neural_steps.testing.references import Moments, Reference, data_file, from_one_based

__all__ = [
    "POSTERIORS",
    "ark",
    "earn_height",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "garch11",
    "gp_regr",
    "hmm_drive_0",
    "hmm_example",
    "kidscore_interaction",
    "kidscore_interaction_c",
    "mesquite",
    "nes1996",
    "sblrc_blr",
]

_SOURCE = "posteriordb {} (stan-dev/posteriordb, BSD-3-Clause): Stan NUTS, 10 chains x 1000 draws"


@lru_cache(maxsize=None)
def posteriordb_data(posterior: str) -> dict:
    """The data of one posteriordb posterior (its ``data.json``), e.g. ``"arK-arK"``."""
    return json.loads(data_file(posterior, "data.json").read_text())


def _array(posterior: str, name: str) -> np.ndarray:
    return np.asarray(posteriordb_data(posterior)[name], dtype=float)


@lru_cache(maxsize=None)
def posteriordb_moments(posterior: str) -> dict[str, Moments]:
    """Mean, sd and their MCSEs of every parameter in the reference draws, 0-based keys."""
    with data_file(posterior, "reference_draws.npz").open("rb") as f, np.load(f) as npz:
        labels = list(npz.files)
        draws = np.stack([npz[label] for label in labels], axis=-1)
    ds = xr.Dataset({"draws": (("chain", "draw", "parameter"), draws)})
    mean = ds["draws"].mean(_posterior.SAMPLE_DIMS).values
    sd = ds["draws"].std(_posterior.SAMPLE_DIMS, ddof=1).values
    mean_mcse = _posterior.mcse_mean(ds)["draws"].values
    sd_mcse = _posterior.mcse_sd(ds)["draws"].values
    return {
        from_one_based(label) if "[" in label else label: Moments(m, s, mm, sm)
        for label, m, s, mm, sm in zip(labels, mean, sd, mean_mcse, sd_mcse, strict=True)
    }


def _reference(name: str, posterior: str, build_model: Callable[[], pm.Model], *,
               moments: dict[str, Moments] | None = None, note: str = "") -> Reference:
    return Reference(
        name=name,
        build_model=build_model,
        moments=posteriordb_moments(posterior) if moments is None else moments,
        source=_SOURCE.format(posterior) + note,
    )


# --- hierarchical ---------------------------------------------------------------------------


def _eight_schools_data() -> tuple[np.ndarray, np.ndarray]:
    posterior = "eight_schools-eight_schools_noncentered"
    return _array(posterior, "y"), _array(posterior, "sigma")


def eight_schools_noncentered() -> Reference:
    """posteriordb ``eight_schools-eight_schools_noncentered``: the non-centred 8 schools model.

    theta_trans_j ~ N(0, 1), mu ~ N(0, 5), tau ~ HalfCauchy(5), theta = mu + tau theta_trans
    (Deterministic), y_j ~ N(theta_j, sigma_j). References for ``mu``, ``tau`` and
    ``theta[0]`` … ``theta[7]``; none for theta_trans.
    """
    y, sigma = _eight_schools_data()

    def build_model() -> pm.Model:
        with pm.Model() as model:
            theta_trans = pm.Normal("theta_trans", mu=0.0, sigma=1.0, shape=y.size)
            mu = pm.Normal("mu", mu=0.0, sigma=5.0)
            tau = pm.HalfCauchy("tau", beta=5.0)
            theta = pm.Deterministic("theta", mu + tau * theta_trans)
            pm.Normal("y", mu=theta, sigma=sigma, observed=y)
        return model

    return _reference("eight_schools_noncentered", "eight_schools-eight_schools_noncentered", build_model)


def eight_schools_centered() -> Reference:
    """posteriordb ``eight_schools-eight_schools_centered``: theta_j ~ N(mu, tau), a funnel.

    The same posterior over (mu, tau, theta) as the non-centred form, whose reference draws
    it uses (posteriordb ships none for this one); only the geometry differs.
    """
    posterior = "eight_schools-eight_schools_centered"
    y, sigma = _array(posterior, "y"), _array(posterior, "sigma")

    def build_model() -> pm.Model:
        with pm.Model() as model:
            mu = pm.Normal("mu", mu=0.0, sigma=5.0)
            tau = pm.HalfCauchy("tau", beta=5.0)
            theta = pm.Normal("theta", mu=mu, sigma=tau, shape=y.size)
            pm.Normal("y", mu=theta, sigma=sigma, observed=y)
        return model

    return _reference("eight_schools_centered", "eight_schools-eight_schools_noncentered", build_model,
                      note="; centred parameterisation, the non-centred reference (same posterior over mu, tau, theta)")


# --- time series ----------------------------------------------------------------------------

# Allowance for the reference sds of alpha1 and beta1 of garch11, as a fraction of the sd.
GARCH11_SD_SYSTEMATIC = 0.02


def _garch_variance_step(shock, previous_variance, beta1):
    """sigma_t² = (alpha0 + alpha1 (y_{t-1} - mu)²) + beta1 sigma_{t-1}²."""
    return shock + beta1 * previous_variance


def garch11() -> Reference:
    """posteriordb ``garch-garch11``: GARCH(1,1) on T = 200 observations with known sigma1.

    mu ∈ R, alpha0 > 0, alpha1 ∈ (0, 1), beta1 ∈ (0, 1 - alpha1), flat (improper) prior on
    that support; sigma_1 = sigma1, sigma_t² = alpha0 + alpha1 (y_{t-1} - mu)² + beta1 sigma_{t-1}²,
    y_t ~ N(mu, sigma_t) for every t (including t = 1).

    Two details:

    * ``beta1 ~ Uniform(0, 1 - alpha1)`` carries a density 1/(1 - alpha1) that the Stan
      program's flat prior does not have; a ``pm.Potential`` adds log(1 - alpha1) back.
      Without it the posterior mean of alpha1 moves by 0.4 posterior sd (beta1 by -0.27).
    * The variance recursion is a ``pytensor.scan``, as in the Stan program. (Closed forms
      as a (T-1)×(T-1) matrix of powers of beta1, or a triangular solve, were 3–25× slower
      per gradient on PyTensor's C backend.) This sequential recursion is what makes the
      gradient expensive, which is the point of the target.

    The reference sds of alpha1 and beta1 are too high by more than their MCSE: an
    importance-sampling check (multivariate-t proposal fitted to the reference draws, 2e6
    draws; ``tests/testing/test_posteriordb.py``) gives sds 1.2 % (alpha1) and 1.7 % (beta1)
    below the reference, i.e. 1.8 and 2.9 reference MCSEs; all other means and sds agree
    within 1.5 MCSE. Their ``Moments.sd_systematic`` is therefore ``GARCH11_SD_SYSTEMATIC``
    (2 %) of the sd, added in quadrature to the sd z-score's denominator; mu and alpha0 keep
    the plain MCSE.
    """
    posterior = "garch-garch11"
    y = _array(posterior, "y")
    sigma1 = float(posteriordb_data(posterior)["sigma1"])

    def build_model() -> pm.Model:
        with pm.Model() as model:
            mu = pm.Flat("mu")
            alpha0 = pm.HalfFlat("alpha0")
            alpha1 = pm.Uniform("alpha1", lower=0.0, upper=1.0)
            beta1 = pm.Uniform("beta1", lower=0.0, upper=1.0 - alpha1)
            pm.Potential("beta1_flat_prior", pt.log1p(-alpha1))
            shock = alpha0 + alpha1 * (y[:-1] - mu) ** 2
            variance = pytensor.scan(
                _garch_variance_step,
                sequences=[shock],
                outputs_info=[pt.as_tensor(np.float64(sigma1**2))],
                non_sequences=[beta1],
                return_updates=False,
            )
            sigma = pt.concatenate([pt.as_tensor(np.array([sigma1])), pt.sqrt(variance)])
            pm.Normal("y", mu=mu, sigma=sigma, observed=y)
        return model

    moments = dict(posteriordb_moments(posterior))
    for key in ("alpha1", "beta1"):
        m = moments[key]
        moments[key] = Moments(m.mean, m.sd, m.mean_mcse, m.sd_mcse, sd_systematic=GARCH11_SD_SYSTEMATIC * m.sd)
    return _reference("garch11", posterior, build_model, moments=moments,
                      note=f"; sd of alpha1 and beta1 given a {GARCH11_SD_SYSTEMATIC:.0%} systematic allowance")


def ark() -> Reference:
    """posteriordb ``arK-arK``: AR(5) on T = 200 observations.

    alpha ~ N(0, 10), beta_k ~ N(0, 10) (k = 1..5, ``beta[k-1]`` here), sigma ~ HalfCauchy(2.5);
    y_t ~ N(alpha + Σ_k beta_k y_{t-k}, sigma) for t > 5.
    """
    posterior = "arK-arK"
    y = _array(posterior, "y")
    order = int(posteriordb_data(posterior)["K"])
    # lags[t - K, k - 1] = y[t - k] for t = K..T-1 (0-based)
    lags = np.stack([y[order - k : y.size - k] for k in range(1, order + 1)], axis=1)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            alpha = pm.Normal("alpha", mu=0.0, sigma=10.0)
            beta = pm.Normal("beta", mu=0.0, sigma=10.0, shape=order)
            sigma = pm.HalfCauchy("sigma", beta=2.5)
            pm.Normal("y", mu=alpha + pt.dot(lags, beta), sigma=sigma, observed=y[order:])
        return model

    return _reference("ark", posterior, build_model)


def _logsumexp(x, axis: int):
    """log Σ exp(x) along ``axis``, stable in value *and* gradient.

    ``pt.logsumexp``'s gradient is exp(x) / Σ exp(x) unshifted, which is 0/0 once every x is
    below about -745 (as the forward variables of a long series are); shifting by a
    gradient-free maximum keeps both terms in range.
    """
    shift = pytensor.gradient.zero_grad(pt.max(x, axis=axis, keepdims=True))
    return pt.squeeze(shift, axis=axis) + pt.log(pt.sum(pt.exp(x - shift), axis=axis))


def _forward_step(emission, log_alpha, log_transition):
    """One step of the forward algorithm: log_alpha_t[k] = emission_t[k] + logsumexp_j(log_alpha_{t-1}[j] + log θ[j, k])."""
    return emission + _logsumexp(log_alpha[:, None] + log_transition, axis=0)


def hmm_log_likelihood(log_emission, log_transition):
    """log p(y_1..N) of an HMM by the forward algorithm, started as Stan's programs start it
    (``gamma[1] = emission[1]``: no initial-state distribution).

    ``log_emission`` is (N, K), ``log_transition[j, k]`` = log P(state k | state j).
    """
    log_alpha = pytensor.scan(
        _forward_step,
        sequences=[log_emission[1:]],
        outputs_info=[log_emission[0]],
        non_sequences=[log_transition],
        return_updates=False,
    )
    return _logsumexp(log_alpha[-1], axis=0)


def _positive_ordered():
    """Stan's ``positive_ordered``: x_1 = exp(u_1), x_k = x_{k-1} + exp(u_k).

    (Chaining PyMC's log and ordered transforms instead orders log x, x_k = x_{k-1} exp(exp(u_k)):
    the same support, but a doubly exponential geometry on which PyMC's NUTS gets stuck.)
    """
    return pm.distributions.transforms.Ordered(positive=True)


def hmm_example() -> Reference:
    """posteriordb ``hmm_example-hmm_example``: a two-state Gaussian HMM, 100 observations.

    theta1, theta2 (rows of the transition matrix) uniform on the simplex; mu positive and
    ordered with mu_1 ~ N(3, 1), mu_2 ~ N(10, 1); y_t | state k ~ N(mu_k, 1); the states are
    summed out by the forward algorithm.
    """
    posterior = "hmm_example-hmm_example"
    y = _array(posterior, "y")

    def build_model() -> pm.Model:
        with pm.Model() as model:
            theta1 = pm.Dirichlet("theta1", a=np.ones(2))
            theta2 = pm.Dirichlet("theta2", a=np.ones(2))
            mu = pm.Normal("mu", mu=np.array([3.0, 10.0]), sigma=1.0, transform=_positive_ordered())
            log_emission = pm.logp(pm.Normal.dist(mu=mu, sigma=1.0), y[:, None])
            log_transition = pt.log(pt.stack([theta1, theta2]))
            pm.Potential("forward", hmm_log_likelihood(log_emission, log_transition))
        return model

    return _reference("hmm_example", posterior, build_model)


def hmm_drive_0() -> Reference:
    """posteriordb ``bball_drive_event_0-hmm_drive_0``: two-state HMM, exponential emissions.

    416 steps of two series (u = 1/speed, v = hoop distance); transition rows
    theta_k ~ Dirichlet(alpha_k) with alpha = [[4, 2], [2, 4]]; rates phi and lambda positive
    and ordered, phi_1, lambda_1 ~ N(0, 1), phi_2, lambda_2 ~ N(3, 1);
    u_t, v_t | state k ~ Exponential(phi_k), Exponential(lambda_k).
    """
    posterior = "bball_drive_event_0-hmm_drive_0"
    u, v = _array(posterior, "u"), _array(posterior, "v")
    alpha = _array(posterior, "alpha")
    prior_mean = np.array([0.0, 3.0])
    start = np.array([0.5, 3.0])  # positive and ordered (the prior mean 0 is on the boundary)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            theta1 = pm.Dirichlet("theta1", a=alpha[0])
            theta2 = pm.Dirichlet("theta2", a=alpha[1])
            phi = pm.Normal("phi", mu=prior_mean, sigma=1.0, transform=_positive_ordered(), initval=start)
            lam = pm.Normal("lambda", mu=prior_mean, sigma=1.0, transform=_positive_ordered(), initval=start)
            log_emission = (pm.logp(pm.Exponential.dist(lam=phi), u[:, None])
                            + pm.logp(pm.Exponential.dist(lam=lam), v[:, None]))
            log_transition = pt.log(pt.stack([theta1, theta2]))
            pm.Potential("forward", hmm_log_likelihood(log_emission, log_transition))
        return model

    return _reference("hmm_drive_0", posterior, build_model)


# --- regressions --------------------------------------------------------------------------


def linear_regression(design: np.ndarray, y: np.ndarray, *, beta_sd: float | None = None,
                      sigma_prior: Callable[[], object] | None = None) -> pm.Model:
    """y ~ N(design @ beta, sigma): Stan's ``vector[D] beta; real<lower=0> sigma;``.

    ``beta_sd`` None is Stan's flat prior on beta, else N(0, beta_sd); ``sigma_prior``
    None is the flat prior on sigma > 0, else a callable making sigma inside the model.
    """
    with pm.Model() as model:
        if beta_sd is None:
            beta = pm.Flat("beta", shape=design.shape[1])
        else:
            beta = pm.Normal("beta", mu=0.0, sigma=beta_sd, shape=design.shape[1])
        sigma = pm.HalfFlat("sigma") if sigma_prior is None else sigma_prior()
        pm.Normal("y", mu=pt.dot(design, beta), sigma=sigma, observed=y)
    return model


def _with_intercept(*columns: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(columns[0]), *columns])


def earn_height() -> Reference:
    """posteriordb ``earnings-earn_height``: earnings (dollars) on height (inches), 1,192 rows.

    earn ~ N(beta_1 + beta_2 height, sigma), flat priors: raw scales 10^4 apart.
    """
    posterior = "earnings-earn_height"
    design, y = _with_intercept(_array(posterior, "height")), _array(posterior, "earn")
    return _reference("earn_height", posterior, lambda: linear_regression(design, y))


def kidscore_interaction() -> Reference:
    """posteriordb ``kidiq-kidscore_interaction``: kid_score on mom_hs, mom_iq and their product.

    Uncentred predictors, 434 rows, strongly correlated coefficients; flat prior on beta,
    sigma ~ HalfCauchy(2.5).
    """
    posterior = "kidiq-kidscore_interaction"
    hs, iq = _array(posterior, "mom_hs"), _array(posterior, "mom_iq")
    design, y = _with_intercept(hs, iq, hs * iq), _array(posterior, "kid_score")

    def build_model() -> pm.Model:
        return linear_regression(design, y, sigma_prior=lambda: pm.HalfCauchy("sigma", beta=2.5))

    return _reference("kidscore_interaction", posterior, build_model)


def kidscore_interaction_c() -> Reference:
    """posteriordb ``kidiq_with_mom_work-kidscore_interaction_c``: the same with centred predictors.

    c_hs = mom_hs - mean, c_iq = mom_iq - mean, interaction c_hs c_iq; flat priors.
    """
    posterior = "kidiq_with_mom_work-kidscore_interaction_c"
    hs, iq = _array(posterior, "mom_hs"), _array(posterior, "mom_iq")
    c_hs, c_iq = hs - hs.mean(), iq - iq.mean()
    design, y = _with_intercept(c_hs, c_iq, c_hs * c_iq), _array(posterior, "kid_score")
    return _reference("kidscore_interaction_c", posterior, lambda: linear_regression(design, y))


_MESQUITE_COLUMNS = ("diam1", "diam2", "canopy_height", "total_height", "density", "group")


def mesquite() -> Reference:
    """posteriordb ``mesquite-mesquite``: shrub weight on six raw measurements, 46 rows, flat priors."""
    posterior = "mesquite-mesquite"
    design = _with_intercept(*(_array(posterior, name) for name in _MESQUITE_COLUMNS))
    y = _array(posterior, "weight")
    return _reference("mesquite", posterior, lambda: linear_regression(design, y))


_NES_COLUMNS = ("real_ideo", "race_adj", "age30_44", "age45_64", "age65up", "educ1", "gender", "income")


def nes1996() -> Reference:
    """posteriordb ``nes1996-nes``: party identification on eight predictors, 1,043 rows, flat priors.

    Age enters as indicators of groups 2, 3, 4 (30–44, 45–64, 65+), as in the Stan program.
    """
    posterior = "nes1996-nes"
    age = np.asarray(posteriordb_data(posterior)["age_discrete"])
    columns = {"age30_44": age == 2, "age45_64": age == 3, "age65up": age == 4}
    design = _with_intercept(*(columns[name].astype(float) if name in columns else _array(posterior, name)
                               for name in _NES_COLUMNS))
    y = _array(posterior, "partyid7")
    return _reference("nes1996", posterior, lambda: linear_regression(design, y))


def sblrc_blr() -> Reference:
    """posteriordb ``sblrc-blr``: y ~ N(X beta, sigma), X 100 x 5, beta ~ N(0, 10), sigma ~ N⁺(0, 10)."""
    posterior = "sblrc-blr"
    design, y = _array(posterior, "X"), _array(posterior, "y")

    def build_model() -> pm.Model:
        return linear_regression(design, y, beta_sd=10.0, sigma_prior=lambda: pm.HalfNormal("sigma", sigma=10.0))

    return _reference("sblrc_blr", posterior, build_model)


def gp_regr() -> Reference:
    """posteriordb ``gp_pois_regr-gp_regr``: GP regression on 11 points, squared-exponential kernel.

    K_ij = alpha² exp(-(x_i - x_j)² / (2 rho²)) + sigma δ_ij (Stan adds sigma, not sigma², on
    the diagonal); rho ~ Gamma(25, rate 4), alpha ~ N⁺(0, 2), sigma ~ N⁺(0, 1); y ~ N(0, K).
    """
    posterior = "gp_pois_regr-gp_regr"
    x, y = _array(posterior, "x"), _array(posterior, "y")
    squared_distance = (x[:, None] - x[None, :]) ** 2

    def build_model() -> pm.Model:
        with pm.Model() as model:
            rho = pm.Gamma("rho", alpha=25.0, beta=4.0)
            alpha = pm.HalfNormal("alpha", sigma=2.0)
            sigma = pm.HalfNormal("sigma", sigma=1.0)
            cov = alpha**2 * pt.exp(-squared_distance / (2 * rho**2)) + sigma * np.eye(x.size)
            pm.MvNormal("y", mu=np.zeros(x.size), cov=cov, observed=y)
        return model

    return _reference("gp_regr", posterior, build_model)


POSTERIORS: dict[str, str] = {
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "eight_schools_centered": "eight_schools-eight_schools_centered",
    "garch11": "garch-garch11",
    "ark": "arK-arK",
    "hmm_example": "hmm_example-hmm_example",
    "hmm_drive_0": "bball_drive_event_0-hmm_drive_0",
    "earn_height": "earnings-earn_height",
    "kidscore_interaction": "kidiq-kidscore_interaction",
    "kidscore_interaction_c": "kidiq_with_mom_work-kidscore_interaction_c",
    "mesquite": "mesquite-mesquite",
    "nes1996": "nes1996-nes",
    "sblrc_blr": "sblrc-blr",
    "gp_regr": "gp_pois_regr-gp_regr",
}
"""Each reference factory's name and the posteriordb posterior (data folder) it transcribes."""
