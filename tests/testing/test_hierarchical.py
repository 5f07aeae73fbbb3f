"""The centred varying-intercept reference: its quadrature moments against its exact draws."""

import numpy as np
from pytensor.graph.traversal import ancestors

from pymc_neural_steps.testing import centered_varying_intercepts
from pymc_neural_steps.testing.references import split_key


def test_exact_draws_match_the_quadrature_moments():
    reference = centered_varying_intercepts(40)
    n = 200_000
    draws = reference.exact_draws(np.random.default_rng(0), n)
    for key, moments in reference.moments.items():
        name, index = split_key(key)
        x = draws[name][(slice(None), *index)]
        assert abs(x.mean() - moments.mean) < 4.5 * x.std() / np.sqrt(n), key
        # The sd's error from n draws: sd · √((κ − 1) / 4n), κ the draws' kurtosis.
        kurtosis = np.mean((x - x.mean()) ** 4) / x.var() ** 2
        assert abs(x.std() - moments.sd) < 4.5 * moments.sd * np.sqrt((kurtosis - 1) / (4 * n)), key


def test_the_model_is_centred_and_its_posterior_reaches_tau_near_zero():
    reference = centered_varying_intercepts(40)
    model = reference.build_model()
    assert {v.name for v in model.free_RVs} == {"mu", "tau", "theta"}
    # Centred: theta's own distribution depends on tau (no theta_raw * tau Deterministic).
    assert model["tau"] in ancestors([model["theta"]]) and not model.deterministics
    tau = reference.exact_draws(np.random.default_rng(1), 100_000)["tau"]
    assert 0.02 < np.mean(tau < 0.1) < 0.2  # the neck has mass: a funnel
