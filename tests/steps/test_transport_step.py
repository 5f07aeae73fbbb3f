"""``NeuTraHMC`` as a PyMC step: exact under both drivers, honest stats, one map for all
chains under the fast driver, save/load, the gate, bad options refused."""

import jax
import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import NeuTraHMC
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.testing import check_exactness, funnel, strongly_correlated_gaussian
from pymc_neural_steps.validation import InvalidSettingError

OPTIONS = dict(train_steps=300, hmc_warmup=100)
RUN = dict(draws=1000, tune=200, random_seed=3, progressbar=False)


class RecordingNeuTraHMC(NeuTraHMC):
    """NeuTraHMC that keeps every carry it ends warm-up with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tuned_carries = []

    def _tuned(self, carry, *, batched):
        super()._tuned(carry, batched=batched)
        self.tuned_carries.append((jax.device_get(carry), batched))


@pytest.fixture(scope="module")
def pooled_run():
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = RecordingNeuTraHMC(**OPTIONS)
        result = pns.sample(step, chains=4, discard_tuned_samples=False, **RUN)
    return reference, step, result


def test_exact_under_the_fast_driver(pooled_run):
    reference, _, result = pooled_run
    check_exactness(result, reference).assert_passed()


def test_one_map_for_all_chains_and_it_learned(pooled_run):
    _, step, _ = pooled_run
    [(carry, batched)] = step.tuned_carries
    assert batched
    for leaf in jax.tree.leaves(carry.training.params):
        leaf = np.asarray(leaf)
        for chain in range(1, 4):
            np.testing.assert_array_equal(leaf[chain], leaf[0])
    # The couplings' linear parts start at zero: training moved them.
    assert np.abs(np.asarray(carry.training.params.couplings[0].linear.weight[0])).max() > 0
    assert step.trained is not None and step.trained.report["train_steps"] == 300
    assert step.trained.report["gate_use_learned"]


def test_stats_are_honest(pooled_run):
    _, _, result = pooled_run
    draws, warm = group_dataset(result, "sample_stats"), group_dataset(result, "warmup_sample_stats")
    for name in ("acceptance_rate", "diverging", "lp", "n_grad_evals", "step_size", "n_steps",
                 "energy_error", "training_loss", "training_grad_evals", "learned_kernel",
                 "n_transitions"):
        assert name in draws, name
    assert draws["learned_kernel"].values.all()
    # A draw of k latent transitions costs their leapfrog steps, one gradient each; with
    # one transition per draw that is n_steps.
    k = draws["n_transitions"].values
    assert (draws["n_grad_evals"].values >= k).all()
    if (k == 1).all():
        np.testing.assert_array_equal(draws["n_grad_evals"].values, draws["n_steps"].values)
    # Training: per step 64 base draws and, per walker (32 shared by 4 chains: 8 each),
    # one gradient to start and the leapfrog steps of its transition.
    steps = warm["training_steps"].values.sum(1) + draws["training_steps"].values.sum(1)
    np.testing.assert_array_equal(steps, 300)
    grads = warm["training_grad_evals"].values.sum(1) + draws["training_grad_evals"].values.sum(1)
    assert (grads >= 300 * (64 + 32 * 2)).all()
    assert np.isfinite(warm["training_loss"].values[:, 100]).all()


def test_save_and_load_round_trip(pooled_run, tmp_path):
    reference, step, _ = pooled_run
    step.save(tmp_path / "map")
    with reference.build_model():
        loaded = NeuTraHMC.load(tmp_path / "map")
        for a, b in zip(jax.tree.leaves(loaded._trained_start.networks),
                        jax.tree.leaves(step.trained.networks)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        result = pns.sample(loaded, chains=2, **RUN)
    assert group_dataset(result, "sample_stats")["learned_kernel"].values.all()
    check_exactness(result, reference, min_ess=100).assert_passed()


def test_exact_under_pm_sample_with_one_map_per_chain():
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        result = pm.sample(step=NeuTraHMC(**OPTIONS), chains=2, cores=1,
                           compute_convergence_checks=False, **RUN)
    check_exactness(result, reference).assert_passed()


def test_funnel_sigma_1_exact_under_the_fast_driver():
    reference = funnel(10, sigma=1.0)
    with reference.build_model():
        result = pns.sample(NeuTraHMC(train_steps=500, hmc_warmup=100), chains=4,
                            **RUN | dict(tune=300))
    check_exactness(result, reference).assert_passed()


@pytest.mark.parametrize(
    "option, bad",
    [("num_walkers", 0), ("num_draws", 0), ("train_steps", -1), ("learning_rate", 0.0),
     ("target_accept", 1.5), ("path_length", -1.0), ("width", 0), ("step_size", float("nan"))],
)
def test_bad_options_are_refused_by_name(option, bad):
    with pm.Model():
        pm.Normal("x")
        with pytest.raises((InvalidSettingError, ValueError), match=option):
            NeuTraHMC(**{option: bad})
