"""The posteriordb references (``pymc_neural_steps.testing.posteriordb``) are the Stan programs.

Default suite: every model's log density equals an independent NumPy/SciPy transcription of
its Stan program at a few points, and every reference's moments are its draws' (posteriordb's
own summary). Slow: PyMC's NUTS passes the exactness check on each posterior it can sample.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pymc as pm
import pytest
from scipy import special, stats

import pymc_neural_steps as pns
from pymc_neural_steps import testing
from pymc_neural_steps.testing import check_exactness, from_one_based
from pymc_neural_steps.testing.posteriordb import POSTERIORS, posteriordb_data
from pymc_neural_steps.testing.references import data_file


def logp_at(model: pm.Model, point: dict[str, np.ndarray]) -> float:
    """The model's log density without Jacobians at a point given in constrained space."""
    values = {}
    for rv in model.free_RVs:
        value = np.asarray(point[rv.name], dtype=float)
        transform = model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = transform.forward(value, *rv.owner.inputs).eval()
        values[model.rvs_to_values[rv].name] = value
    return float(model.compile_logp(jacobian=False)(values))


def _data(name: str) -> dict:
    return posteriordb_data(POSTERIORS[name])


def _col(data: dict, key: str) -> np.ndarray:
    return np.asarray(data[key], dtype=float)


# --- NumPy transcriptions of the Stan programs ------------------------------------------------


def _normal_regression(design, y, beta, sigma) -> float:
    return float(stats.norm.logpdf(y, design @ beta, sigma).sum())


def _hmm_forward(log_emission: np.ndarray, transition: np.ndarray) -> float:
    gamma = log_emission[0]
    for t in range(1, log_emission.shape[0]):
        gamma = np.array([special.logsumexp(gamma + np.log(transition[:, k]) + log_emission[t, k])
                          for k in range(transition.shape[0])])
    return float(special.logsumexp(gamma))


def _stan_earn_height(p):
    d = _data("earn_height")
    design = np.column_stack([np.ones(len(d["height"])), _col(d, "height")])
    return _normal_regression(design, _col(d, "earn"), p["beta"], p["sigma"])


def _stan_kidscore_interaction(p):
    d = _data("kidscore_interaction")
    hs, iq = _col(d, "mom_hs"), _col(d, "mom_iq")
    design = np.column_stack([np.ones_like(hs), hs, iq, hs * iq])
    prior = stats.halfcauchy.logpdf(p["sigma"], scale=2.5)
    return prior + _normal_regression(design, _col(d, "kid_score"), p["beta"], p["sigma"])


def _stan_kidscore_interaction_c(p):
    d = _data("kidscore_interaction_c")
    hs, iq = _col(d, "mom_hs"), _col(d, "mom_iq")
    hs, iq = hs - hs.mean(), iq - iq.mean()
    design = np.column_stack([np.ones_like(hs), hs, iq, hs * iq])
    return _normal_regression(design, _col(d, "kid_score"), p["beta"], p["sigma"])


def _stan_mesquite(p):
    d = _data("mesquite")
    names = ["diam1", "diam2", "canopy_height", "total_height", "density", "group"]
    design = np.column_stack([np.ones(len(d["weight"]))] + [_col(d, n) for n in names])
    return _normal_regression(design, _col(d, "weight"), p["beta"], p["sigma"])


def _stan_nes1996(p):
    d = _data("nes1996")
    age = np.asarray(d["age_discrete"])
    columns = [_col(d, "real_ideo"), _col(d, "race_adj"), (age == 2) * 1.0, (age == 3) * 1.0, (age == 4) * 1.0,
               _col(d, "educ1"), _col(d, "gender"), _col(d, "income")]
    design = np.column_stack([np.ones(age.size), *columns])
    return _normal_regression(design, _col(d, "partyid7"), p["beta"], p["sigma"])


def _stan_sblrc_blr(p):
    d = _data("sblrc_blr")
    prior = stats.norm.logpdf(p["beta"], 0, 10).sum() + stats.halfnorm.logpdf(p["sigma"], scale=10)
    return prior + _normal_regression(_col(d, "X"), _col(d, "y"), p["beta"], p["sigma"])


def _stan_gp_regr(p):
    d = _data("gp_regr")
    x, y = _col(d, "x"), _col(d, "y")
    cov = p["alpha"] ** 2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * p["rho"] ** 2)) + p["sigma"] * np.eye(x.size)
    prior = (stats.gamma.logpdf(p["rho"], 25, scale=1 / 4) + stats.halfnorm.logpdf(p["alpha"], scale=2)
             + stats.halfnorm.logpdf(p["sigma"], scale=1))
    return prior + stats.multivariate_normal.logpdf(y, np.zeros(x.size), cov)


def _stan_hmm_example(p):
    y = _col(_data("hmm_example"), "y")
    prior = stats.norm.logpdf(p["mu"], [3, 10], 1).sum()  # uniform simplex rows: log Dirichlet(1, 1) = 0
    log_emission = stats.norm.logpdf(y[:, None], p["mu"][None, :], 1)
    return prior + _hmm_forward(log_emission, np.stack([p["theta1"], p["theta2"]]))


def _stan_hmm_drive_0(p):
    d = _data("hmm_drive_0")
    u, v, alpha = _col(d, "u"), _col(d, "v"), _col(d, "alpha")
    prior = (stats.dirichlet.logpdf(p["theta1"], alpha[0]) + stats.dirichlet.logpdf(p["theta2"], alpha[1])
             + stats.norm.logpdf(p["phi"], [0, 3], 1).sum() + stats.norm.logpdf(p["lambda"], [0, 3], 1).sum())
    log_emission = (stats.expon.logpdf(u[:, None], scale=1 / p["phi"][None, :])
                    + stats.expon.logpdf(v[:, None], scale=1 / p["lambda"][None, :]))
    return prior + _hmm_forward(log_emission, np.stack([p["theta1"], p["theta2"]]))


def _stan_eight_schools_centered(p):
    d = _data("eight_schools_centered")
    return float(stats.norm.logpdf(p["mu"], 0, 5) + stats.halfcauchy.logpdf(p["tau"], scale=5)
                 + stats.norm.logpdf(p["theta"], p["mu"], p["tau"]).sum()
                 + stats.norm.logpdf(_col(d, "y"), p["theta"], _col(d, "sigma")).sum())


STAN = {
    "earn_height": _stan_earn_height,
    "kidscore_interaction": _stan_kidscore_interaction,
    "kidscore_interaction_c": _stan_kidscore_interaction_c,
    "mesquite": _stan_mesquite,
    "nes1996": _stan_nes1996,
    "sblrc_blr": _stan_sblrc_blr,
    "gp_regr": _stan_gp_regr,
    "hmm_example": _stan_hmm_example,
    "hmm_drive_0": _stan_hmm_drive_0,
    "eight_schools_centered": _stan_eight_schools_centered,
}


def _reference_point(name: str, draw: int) -> dict[str, np.ndarray]:
    """One of posteriordb's reference draws, as {variable: value}: points where the density matters."""
    folder = POSTERIORS["eight_schools_noncentered" if name == "eight_schools_centered" else name]
    with data_file(folder, "reference_draws.npz").open("rb") as f, np.load(f) as npz:
        flat = {from_one_based(label) if "[" in label else label: npz[label].ravel()[draw] for label in npz.files}
    point: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        variable, index = testing.split_key(key)
        point[variable] = np.append(point.get(variable, np.empty(0)), value) if index else np.asarray(value)
    return point


# hmm_drive_0 compiles a long forward recursion (~20 s): --runslow.
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "hmm_drive_0" else n for n in sorted(STAN)
])
def test_log_density_is_the_stan_programs(name):
    # abs=1e-5: PyTensor stores Python floats that float32 holds exactly (sigma=2.0) as float32
    # constants, so each constant term carries ~1e-7 of rounding; a wrong model is off by far more.
    model = testing.REFERENCES[name]().build_model()
    for draw in (0, 4321, 9999):
        point = _reference_point(name, draw)
        assert logp_at(model, point) == pytest.approx(STAN[name](point), rel=1e-9, abs=1e-5), draw


@pytest.mark.parametrize("name", sorted(set(POSTERIORS) - {"eight_schools_centered"}))
def test_reference_moments_are_posteriordbs_summary(name):
    summary = json.loads(data_file(POSTERIORS[name], "reference_summary.json").read_text())
    reference = testing.REFERENCES[name]()
    assert len(reference) == len(summary)
    for label, published in summary.items():
        moments = reference[from_one_based(label) if "[" in label else label]
        assert moments.mean == pytest.approx(published["mean"], rel=1e-9)
        assert moments.sd == pytest.approx(published["sd"], rel=1e-9)
        # ArviZ's MCSE of the mean on the draws agrees with posteriordb's own to 5 %
        assert moments.mean_mcse == pytest.approx(published["mean_value_mcse_pdb"], rel=0.05)
        assert 0 < moments.sd_mcse < moments.sd / 50


def test_robustness_suite_names_every_posteriordb_posterior():
    assert set(POSTERIORS) <= set(testing.ROBUSTNESS_SUITE)
    assert set(testing.ROBUSTNESS_SUITE) <= set(testing.REFERENCES)


def test_centred_eight_schools_shares_the_noncentred_answer():
    centred, noncentred = testing.eight_schools_centered(), testing.eight_schools_noncentered()
    assert dict(centred.moments) == dict(noncentred.moments)
    assert {rv.name for rv in centred.build_model().free_RVs} == {"mu", "tau", "theta"}


# --- slow: PyMC's NUTS on every new posterior -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(STAN) - {"eight_schools_centered"}))
def test_nuts_passes(name):
    reference = testing.REFERENCES[name]()
    with reference.build_model():
        result = pm.sample(draws=2000, tune=1000, chains=2, cores=1, random_seed=17, progressbar=False,
                           compute_convergence_checks=False, nuts_sampler="pymc", target_accept=0.9)
    check_exactness(result, reference).assert_passed()


# --- slow: every method of this package, defaults, on four of them ---------------------------

# Four that every method passes (measured 2026-12-03: 16 passed in 5 min, persistent
# compilation cache warm; the robustness suite in docs/robustness.md has the rest):
# a hierarchy, an interaction regression, a log-scale regression, a 5-parameter regression.
FOR_EVERY_METHOD = ("eight_schools_noncentered", "kidscore_interaction_c", "mesquite", "sblrc_blr")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["JaxHMC", "NNgHMC", "L2HMC", "EntropyFlowMC"])
@pytest.mark.parametrize("name", FOR_EVERY_METHOD)
def test_every_method_passes_with_the_defaults(name, method):
    reference = testing.REFERENCES[name]()
    with reference.build_model() as model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a gate's fallback warns; allowed
        result = pns.sample(getattr(pns, method)(), draws=1000, tune=1000, chains=4,
                            random_seed=20240601, progressbar=False,
                            compute_convergence_checks=False, model=model)
    check_exactness(result, reference, threshold=4.5, max_rhat=1.01).assert_passed()
