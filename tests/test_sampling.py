"""The fast driver: same answers and the same kind of result as pm.sample, all chains at once."""

import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import sampling
from pymc_neural_steps._compat import PYMC_MAJOR, group_dataset, has_group
from pymc_neural_steps.testing import (
    check_exactness,
    constrained,
    correlated_gaussian,
    eight_schools_noncentered,
)

RUN = dict(draws=1500, tune=800, chains=4, progressbar=False)


@pytest.mark.parametrize(
    "reference", [correlated_gaussian(), constrained(), eight_schools_noncentered()], ids=lambda r: r.name
)
def test_exact_under_the_fast_driver(reference):
    with reference.build_model():
        result = pns.sample(pns.JaxHMC(), random_seed=7, **RUN)
    check_exactness(result, reference).assert_passed()


def test_result_looks_like_pm_sample():
    reference = eight_schools_noncentered()
    with reference.build_model():
        result = pns.sample(pns.JaxHMC(), random_seed=1, draws=50, tune=50, chains=2,
                            progressbar=False, discard_tuned_samples=False)
    expected_type = "DataTree" if PYMC_MAJOR >= 6 else "InferenceData"
    assert type(result).__name__ == expected_type
    for group in ("posterior", "sample_stats", "observed_data", "warmup_posterior",
                  "warmup_sample_stats"):
        assert has_group(result, group), group
    posterior = group_dataset(result)
    assert posterior["theta"].shape == (2, 50, 8)  # the Deterministic is there
    assert "theta_trans" in posterior and "tau" in posterior
    assert "tau_log__" not in posterior
    stats = group_dataset(result, "sample_stats")
    assert {"lp", "acceptance_rate", "diverging", "n_grad_evals", "step_size"} <= set(stats)
    assert stats["diverging"].dtype == bool


def test_same_seed_same_draws_different_seed_different_draws():
    with correlated_gaussian().build_model():
        a = pns.sample(pns.JaxHMC(), random_seed=3, draws=100, tune=100, chains=2, progressbar=False)
        b = pns.sample(pns.JaxHMC(), random_seed=3, draws=100, tune=100, chains=2,
                       progressbar=False, chunk_size=7)
        c = pns.sample(pns.JaxHMC(), random_seed=4, draws=100, tune=100, chains=2, progressbar=False)
    x = [group_dataset(r)["x"].values for r in (a, b, c)]
    np.testing.assert_array_equal(x[0], x[1])  # chunking does not change the chain
    assert not np.array_equal(x[0], x[2])


def test_ctrl_c_keeps_the_draws_made(monkeypatch):
    calls = {"sampling": 0}
    original = sampling._Progress.update

    def interrupting_update(self, advance, phase):
        original(self, advance, phase)
        if phase == "sampling":
            calls["sampling"] += 1
            if calls["sampling"] == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(sampling._Progress, "update", interrupting_update)
    with correlated_gaussian().build_model():
        with pytest.warns(UserWarning, match="interrupted"):
            result = pns.sample(pns.JaxHMC(), random_seed=1, draws=200, tune=100, chains=2,
                                chunk_size=20, progressbar=False)
    assert group_dataset(result)["x"].shape[:2] == (2, 60)


def test_refuses_models_it_cannot_sample_whole():
    with pm.Model():
        k = pm.Poisson("k", 2.0)
        pm.Normal("z", k, 1.0)
        with pytest.raises(ValueError, match=r"\['k'\]"):
            pns.sample(pns.JaxHMC(), draws=10, tune=10, progressbar=False)


def test_non_finite_start_is_named():
    with pm.Model():
        b = pm.HalfNormal("b", 1.0)
        pm.Potential("broken", pm.math.log(-b))
        with pytest.raises(pns.NonFiniteInitialPointError, match="broken"):
            pns.sample(pns.JaxHMC(), draws=10, tune=10, chains=1, progressbar=False)
