"""JaxHMC through pm.sample: exactness, multiprocessing, compound steps, bad input."""

import subprocess
import sys

import numpy as np
import pymc as pm
import pytest

from pymc_neural_steps import JaxHMC, NonFiniteInitialPointError
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.testing import (
    check_exactness,
    constrained,
    correlated_gaussian,
    eight_schools_noncentered,
)

SAMPLE = dict(draws=1000, tune=600, chains=4, progressbar=False, compute_convergence_checks=False)


@pytest.mark.parametrize(
    "reference", [correlated_gaussian(), constrained(), eight_schools_noncentered()], ids=lambda r: r.name
)
def test_exact_under_pm_sample(reference):
    with reference.build_model():
        idata = pm.sample(step=JaxHMC(), cores=1, random_seed=11, **SAMPLE)
    check_exactness(idata, reference).assert_passed()
    stats = group_dataset(idata, "sample_stats")
    for name in ("acceptance_rate", "diverging", "energy", "energy_error", "step_size",
                 "n_steps", "lp", "n_grad_evals"):
        assert name in stats, name
    # One true gradient per leapfrog step, nothing hidden.
    np.testing.assert_array_equal(stats["n_grad_evals"].values, stats["n_steps"].values)


@pytest.fixture(scope="module")
def gaussian_sequential():
    reference = correlated_gaussian()
    with reference.build_model():
        idata = pm.sample(step=JaxHMC(), cores=1, random_seed=5, **SAMPLE)
    return reference, idata


# forkserver is the slower twin of spawn (both start fresh interpreters): --runslow.
@pytest.mark.parametrize(
    "mp_ctx", [pytest.param("forkserver", marks=pytest.mark.slow), "spawn"]
)
def test_two_processes_give_the_same_draws(gaussian_sequential, mp_ctx):
    reference, sequential = gaussian_sequential
    with reference.build_model():
        parallel = pm.sample(step=JaxHMC(), cores=2, mp_ctx=mp_ctx, random_seed=5, **SAMPLE)
    check_exactness(parallel, reference).assert_passed()
    np.testing.assert_array_equal(
        group_dataset(parallel)["x"].values, group_dataset(sequential)["x"].values
    )


FORK_SCRIPT = """
import sys, numpy as np, pymc as pm
from pymc_neural_steps import JaxHMC
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.testing import correlated_gaussian
with correlated_gaussian().build_model():
    idata = pm.sample(step=JaxHMC(), cores=2, mp_ctx="fork", random_seed=5, **{sample})
np.save(sys.argv[1], group_dataset(idata)["x"].values)
"""


def test_fork_from_a_fresh_process_gives_the_same_draws(gaussian_sequential, tmp_path):
    # fork is only safe while the parent has not started JAX, which is the case for a
    # user's script that builds a model and calls pm.sample: run exactly that.
    reference, sequential = gaussian_sequential
    out = tmp_path / "x.npy"
    script = FORK_SCRIPT.format(sample=repr(SAMPLE))
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=300)
    forked = np.load(out)
    np.testing.assert_array_equal(forked, group_dataset(sequential)["x"].values)


@pytest.mark.timeout(300)
def test_fork_after_jax_started_fails_clearly_instead_of_hanging(gaussian_sequential):
    reference, _ = gaussian_sequential  # JAX has run in this process by now
    with reference.build_model():
        with pytest.raises(Exception, match="forkserver"):
            pm.sample(step=JaxHMC(), cores=2, mp_ctx="fork", random_seed=5, **SAMPLE)


def test_every_chain_tunes_from_scratch(gaussian_sequential):
    # If tuning state leaked from chain 0 into chain 1, chain 1's first warm-up draws
    # would use chain 0's adapted step size instead of the initial one.
    reference, _ = gaussian_sequential
    with reference.build_model():
        idata = pm.sample(step=JaxHMC(), cores=1, random_seed=5, discard_tuned_samples=False,
                          **SAMPLE)
    first = group_dataset(idata, "warmup_sample_stats")["step_size"].values[:, 0]
    assert (first == first[0]).all()


def test_compound_step_with_metropolis_on_a_discrete_variable():
    # k ~ Bernoulli(0.3), z | k ~ N(3k, 1): z is a two-component mixture.
    with pm.Model():
        k = pm.Bernoulli("k", 0.3)
        z = pm.Normal("z", 3.0 * k, 1.0)
        step = [JaxHMC([z]), pm.BinaryGibbsMetropolis([k])]
        idata = pm.sample(step=step, cores=1, random_seed=3, draws=3000, tune=500, chains=2,
                          progressbar=False, compute_convergence_checks=False)
    posterior = group_dataset(idata)
    import arviz as az

    for name, mean, sd in (("k", 0.3, np.sqrt(0.21)), ("z", 0.9, np.sqrt(1 + 9 * 0.21))):
        draws = posterior[name]
        mcse = float(az.mcse(posterior[[name]].astype(float))[name])
        assert abs(float(draws.mean()) - mean) / mcse < 4, name
        assert abs(float(draws.std()) - sd) < 0.05, name
    stats = group_dataset(idata, "sample_stats")
    grads = stats["sampler_0__n_grad_evals"] if "sampler_0__n_grad_evals" in stats else stats["n_grad_evals"]
    steps = stats["sampler_0__n_steps"] if "sampler_0__n_steps" in stats else stats["n_steps"]
    # The discrete update changes the density under z: one extra gradient per draw.
    assert (grads.values >= steps.values).all() and (grads.values > steps.values).any()


def test_non_finite_initial_point_names_the_variable():
    with pm.Model():
        pm.Normal("fine", 0.0, 1.0)
        b = pm.HalfNormal("b", 1.0)
        pm.Potential("broken", pm.math.log(-b))
        with pytest.raises((NonFiniteInitialPointError, pm.exceptions.SamplingError), match="broken"):
            pm.sample(step=JaxHMC(), cores=1, chains=1, draws=10, tune=10, progressbar=False)


def test_ctrl_c_returns_the_draws_so_far():
    reference = correlated_gaussian()

    def interrupt(trace, draw):
        if draw.draw_idx == 700:
            raise KeyboardInterrupt

    with reference.build_model():
        idata = pm.sample(step=JaxHMC(), cores=1, chains=1, draws=1000, tune=300,
                          callback=interrupt, progressbar=False, random_seed=1,
                          compute_convergence_checks=False)
    n = group_dataset(idata)["x"].shape[1]
    assert 0 < n < 1000


def test_tune_zero_samples_with_initial_settings():
    reference = correlated_gaussian()
    with reference.build_model():
        idata = pm.sample(step=JaxHMC(), cores=1, chains=1, draws=200, tune=0,
                          progressbar=False, random_seed=1, compute_convergence_checks=False)
    assert np.isfinite(group_dataset(idata)["x"].values).all()


def test_bad_options_are_refused():
    with correlated_gaussian().build_model():
        with pytest.raises(ValueError, match="target_accept"):
            JaxHMC(target_accept=1.5)
