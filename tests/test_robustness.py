"""Posteriors nobody tuned for, sampled with the defaults: each method must converge
(R-hat, ESS) and be exact (z-scores against the known answer), whatever its learned part
decided. Slow (minutes per method): run with --runslow.

The calendar-year regression is the case that returned R-hat 1.5-3 from NNgHMC and L2HMC
before the checks of issue 14 (NNgHMC's re-check at the draws' settings, the learned
kernels' mixing gate); docs/robustness.md has the figures."""

import warnings

import arviz as az
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps.testing import calendar_year_regression, check_exactness

# Known shortfalls (issue 14, measured 2026-12-02 on the known-noise form here): NNgHMC
# ends at R-hat 1.01 / tail ESS 340; L2HMC's gate falls back to HMC, whose re-adaptation in
# the warm-up left after training is too short (R-hat 1.04, ESS 206). Strict: a fix that
# makes them pass must remove the mark.
SHORT = "issue 14: does not converge on this posterior yet (docs/robustness.md)"
METHODS = [
    "JaxHMC",
    pytest.param("NNgHMC", marks=pytest.mark.xfail(strict=True, reason=SHORT)),
    pytest.param("L2HMC", marks=pytest.mark.xfail(strict=True, reason=SHORT)),
    "EntropyFlowMC",
]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_an_uncentred_regression_converges_with_the_defaults(method):
    reference = calendar_year_regression()
    with reference.build_model() as model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a gate's fallback warns; allowed
        step = getattr(pns, method)()
        result = pns.sample(step, draws=1000, tune=1000, chains=4, random_seed=1,
                            progressbar=False, compute_convergence_checks=False, model=model)
    summary = az.summary(result, var_names=["a", "b"], round_to="none")
    assert summary["r_hat"].max() < 1.01, summary
    assert summary["ess_bulk"].min() >= 400, summary
    check_exactness(result, reference).assert_passed()
