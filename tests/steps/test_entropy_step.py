"""EntropyFlowMC as a PyMC step: exact through both drivers, one pooled kernel in the fast
driver and one per chain under pm.sample, honest stats, rollback of non-finite training,
a broken network that never moves the chain, save and load."""


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import EntropyFlowMC, LayoutMismatchError
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.kernels import entropy as entropy_kernel
from pymc_neural_steps.trained import TrainedEntropyFlow
from pymc_neural_steps.validation import InvalidSettingError
from pymc_neural_steps.testing import (
    check_exactness,
    funnel,
    german_credit,
    rotated_gaussian,
    strongly_correlated_gaussian,
)

# Small enough for the default suite (compilation is most of the cost), long enough to
# train: on the 2-d SCG the untrained flow (MALA) has a bulk ESS of ~0.002 per step, the
# kernel after 300 steps no better, after 1000 steps ~0.12 (3000 steps, the default: ~0.5).
OPTIONS = dict(train_steps=1000, hmc_warmup=100)
RUN = dict(draws=1000, tune=200, random_seed=3, progressbar=False)


class RecordingEntropyFlowMC(EntropyFlowMC):
    """EntropyFlowMC that keeps every carry it ends warm-up with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tuned_carries = []

    def _tuned(self, carry, *, batched):
        super()._tuned(carry, batched=batched)
        self.tuned_carries.append((jax.device_get(carry), batched))


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def stats_of(result, group="sample_stats"):
    return group_dataset(result, group)


# ------------------------------------------------------------------ the fast driver


@pytest.fixture(scope="module")
def pooled_run():
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = RecordingEntropyFlowMC(**OPTIONS)
        result = pns.sample(step, chains=4, discard_tuned_samples=False, **RUN)
    return reference, step, result


def test_exact_under_the_fast_driver(pooled_run):
    reference, _, result = pooled_run
    check_exactness(result, reference).assert_passed()


def test_fast_driver_trains_one_kernel_on_the_pooled_ensemble(pooled_run):
    _, step, result = pooled_run
    [(carry, batched)] = step.tuned_carries
    assert batched
    for leaf in leaves(carry.training.params):  # every chain holds the very same networks
        for chain in range(1, 4):
            np.testing.assert_array_equal(leaf[chain], leaf[0])
    beta = np.asarray(carry.training.context.beta)
    assert np.all(beta == beta[0]) and beta[0] > 0
    assert not np.array_equal(carry.hmc.state.position[0], carry.hmc.state.position[1])
    # The networks learned (their output layers start at zero).
    out = np.asarray(carry.training.params.halves[0].sqt.weights[-1][0])
    assert np.abs(out).max() > 0
    assert step.trained is not None and step.trained.layout == step.layout.fingerprint()
    # 64 walkers shared by 4 chains: 16 per chain, 2 forward gradients each per step.
    warm, draws = stats_of(result, "warmup_sample_stats"), stats_of(result)
    steps = warm["training_steps"].values.sum(1) + draws["training_steps"].values.sum(1)
    np.testing.assert_array_equal(steps, OPTIONS["train_steps"])
    grads = warm["training_grad_evals"].values.sum(1) + draws["training_grad_evals"].values.sum(1)
    np.testing.assert_array_equal(grads, OPTIONS["train_steps"] * 16 * 2)
    # The gate's pilots, counted apart: 8 walkers per chain (32 / 4), each at least a
    # refresh and 64 + 16 transitions of one gradient or more.
    gate = warm["gate_grad_evals"].values.sum(1) + draws["gate_grad_evals"].values.sum(1)
    assert (gate >= 8 * (2 + 64 + 16)).all()


def test_stats_are_honest(pooled_run):
    _, _, result = pooled_run
    draws, warm = stats_of(result), stats_of(result, "warmup_sample_stats")
    for name in ("acceptance_rate", "diverging", "lp", "n_grad_evals", "n_logp_evals",
                 "log_q_forward", "log_q_reverse", "proposal_entropy", "beta", "step_size",
                 "nonfinite_reverse", "training_loss", "training_time", "training_grad_evals",
                 "training_rollbacks", "training_acceptance"):
        assert name in draws, name
    # The variant without R: one gradient (at x', with log p(x')) per transition, and a
    # draw is the gate's transitions per draw.
    transitions = draws["n_transitions"].values
    assert transitions.min() >= 1 and np.all(transitions == transitions.flat[0])
    np.testing.assert_array_equal(draws["n_grad_evals"].values, transitions)
    np.testing.assert_array_equal(draws["n_logp_evals"].values, 0)
    for name in ("log_q_forward", "log_q_reverse", "proposal_entropy", "beta"):
        assert np.isfinite(draws[name].values).all(), name
    assert (draws["beta"].values > 0).all()
    assert not draws["diverging"].values.any() and not draws["nonfinite_reverse"].values.any()
    acceptance = draws["acceptance_rate"].values.mean()
    assert 0.5 < acceptance < 0.95  # held near the controller's target, 0.75
    # The first 100 warm-up iterations are HMC (jittered lengths, NaN flow stats).
    hmc_steps = warm["n_steps"].values[:, :100]
    assert len(np.unique(hmc_steps)) > 3
    np.testing.assert_array_equal(warm["n_grad_evals"].values[:, :100], hmc_steps)
    assert np.isnan(warm["log_q_forward"].values[:, :100]).all()
    # Training started after iteration 99 and is reported on the iteration that follows.
    assert (warm["training_steps"].values[:, 100] > 0).all()
    assert (warm["training_steps"].values[:, :100] == 0).all()
    assert np.isfinite(warm["training_loss"].values[:, 100]).all()
    assert (warm["training_time"].values.sum(1) > 0).all()
    assert (draws["training_steps"].values[:, 1:] == 0).all()


def test_save_and_load_round_trip(pooled_run, tmp_path):
    reference, step, _ = pooled_run
    step.save(tmp_path / "kernel")
    with reference.build_model():
        loaded = EntropyFlowMC.load(tmp_path / "kernel")
        trained = loaded._trained_start
        for a, b in zip(leaves(trained.networks), leaves(step.trained.networks)):
            np.testing.assert_array_equal(a, b)
        assert trained.networks.masks == step.trained.networks.masks
        assert trained.networks.use_r == step.trained.networks.use_r
        # d = 2 ≤ 100: dense whitening by default, a (d, d) covariance round-trips.
        assert trained.inverse_mass.shape == (2, 2)
        np.testing.assert_array_equal(trained.inverse_mass, step.trained.inverse_mass)
        np.testing.assert_array_equal(trained.center, step.trained.center)
        assert trained.beta == step.trained.beta
        # A loaded kernel samples from the first draw: no warm-up, no training.
        result = pns.sample(loaded, draws=1000, tune=0, chains=4, random_seed=5,
                            progressbar=False)
    check_exactness(result, reference).assert_passed()
    draws = stats_of(result)
    assert (draws["training_steps"].values == 0).all()
    np.testing.assert_array_equal(draws["step_size"].values, step.trained.step_size)

    with pm.Model():
        pm.Normal("x", 0.0, 1.0, shape=3)
        with pytest.raises(LayoutMismatchError, match="x"):
            EntropyFlowMC.load(tmp_path / "kernel")
        with pytest.raises(LayoutMismatchError, match="x"):
            EntropyFlowMC.from_trained(step)


def test_pooled_dense_whitening_is_shared_and_fixed(pooled_run):
    _, step, _ = pooled_run
    [(carry, _)] = step.tuned_carries
    context = carry.training.context
    assert context.inverse_mass.shape == (4, 2, 2) and context.scale.shape == (4, 2, 2)
    for chain in range(1, 4):  # one whitening for all chains
        np.testing.assert_array_equal(context.inverse_mass[chain], context.inverse_mass[0])
    cov = context.inverse_mass[0]
    np.testing.assert_allclose(context.scale[0] @ context.scale[0].T, cov, rtol=1e-10)
    # SCG's π/4 rotation: the pooled warm-up estimate finds the strong correlation.
    assert cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]) > 0.9


# Slow (~30 s): the SCG runs above exercise the dense whitening (the default at d = 2).
@pytest.mark.slow
def test_rotated_gaussian_exact_with_dense_whitening():
    # The 20-d rotated Gaussian (eigenvalues 1e-2..1e2): a diagonal whitening leaves it
    # ill-conditioned (~1e4); the dense one must sample it, exactly.
    reference = rotated_gaussian(20)
    with reference.build_model():
        step = EntropyFlowMC(train_steps=1000, hmc_warmup=100, rewhiten_steps=200)
        result = pns.sample(step, chains=4, draws=1500, tune=150, random_seed=7,
                            progressbar=False)
    assert step.trained.inverse_mass.shape == (20, 20)
    check_exactness(result, reference).assert_passed()
    assert stats_of(result)["acceptance_rate"].values.mean() > 0.3


# ------------------------------------------------------------------ pm.sample


def test_exact_under_pm_sample_with_one_kernel_per_chain():
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = RecordingEntropyFlowMC(**OPTIONS)
        result = pm.sample(step=step, chains=2, cores=1, compute_convergence_checks=False,
                           **{**RUN, "draws": 1500})
    check_exactness(result, reference).assert_passed()
    carries = step.tuned_carries
    assert len(carries) == 2 and not any(batched for _, batched in carries)
    # Each chain trained its own kernel from scratch: different networks and whitening.
    a, b = (c.training for c, _ in carries)
    assert not np.array_equal(a.params.halves[0].sqt.weights[-1], b.params.halves[0].sqt.weights[-1])
    assert not np.array_equal(a.context.inverse_mass, b.context.inverse_mass)
    for carry, _ in carries:
        assert int(carry.training.num_steps) == OPTIONS["train_steps"]
    draws = stats_of(result)
    np.testing.assert_array_equal(draws["n_grad_evals"].values, draws["n_transitions"].values)


# ------------------------------------------------------------------ bad networks


def test_non_finite_training_steps_are_rolled_back(monkeypatch):
    original = entropy_kernel.entropy_objective

    def sometimes_nan(nets, key, *args, **kwargs):
        loss, aux = original(nets, key, *args, **kwargs)
        broken = jax.random.uniform(jax.random.fold_in(key, 77)) < 0.25
        return jnp.where(broken, jnp.nan, loss), aux

    monkeypatch.setattr(entropy_kernel, "entropy_objective", sometimes_nan)
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = RecordingEntropyFlowMC(train_steps=300, hmc_warmup=100)
        # tune = 110: one round after the HMC warm-up, the rest when warm-up ends (fewer
        # scan segments of distinct lengths to compile).
        result = pns.sample(step, chains=2, draws=300, tune=110, random_seed=4,
                            discard_tuned_samples=False, progressbar=False)
    [(carry, _)] = step.tuned_carries
    rejected = int(carry.training.num_rejected[0])
    assert 40 < rejected < 120 and int(carry.training.num_steps[0]) == 300
    assert all(np.isfinite(leaf).all() for leaf in leaves(carry.training.params))
    assert np.isfinite(carry.training.context.beta).all()
    total = sum(int(stats_of(result, g)["training_rollbacks"].values[0].sum())
                for g in ("warmup_sample_stats", "sample_stats"))
    assert total == rejected
    assert np.isfinite(group_dataset(result)["x"].values).all()
    assert stats_of(result)["acceptance_rate"].values.mean() > 0.3  # the controller's 0.75


def test_a_nan_network_never_moves_the_chain(pooled_run):
    # Every proposal of this kernel is NaN: all are rejected, counted as divergent, and the
    # chain stays at its (finite) starting point instead of taking a NaN.
    reference, step, _ = pooled_run
    nets = step.trained.networks
    nan_bias = np.full_like(nets.halves[0].sqt.biases[-1], np.nan)
    broken = TrainedEntropyFlow(
        networks=eqx.tree_at(lambda n: n.halves[0].sqt.biases[-1], nets, nan_bias),
        center=step.trained.center,
        inverse_mass=step.trained.inverse_mass,
        beta=step.trained.beta,
        layout=step.trained.layout,
        options=step.trained.options,
    )
    with reference.build_model():
        result = pns.sample(EntropyFlowMC.from_trained(broken), draws=50, tune=0, chains=2,
                            random_seed=1, progressbar=False)
    draws = stats_of(result)
    x = group_dataset(result)["x"].values
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1], x.shape))
    assert (draws["acceptance_rate"].values == 0).all()
    assert draws["diverging"].values.all() and draws["nonfinite_reverse"].values.all()
    assert np.isfinite(draws["lp"].values).all()


def test_a_training_run_that_never_succeeds_is_reported():
    from types import SimpleNamespace

    from pymc_neural_steps import ensemble
    from pymc_neural_steps.programs.entropy import FlowContext

    with strongly_correlated_gaussian().build_model():
        step = EntropyFlowMC()
    nets = entropy_kernel.init_networks(jax.random.key(0), 2, width=8)
    training = ensemble.TrainingState(
        params=nets, opt_state=(), walkers=jnp.zeros((4, 2)),
        context=FlowContext(jnp.zeros(2), jnp.ones(2), jnp.ones(2), jnp.asarray(0.5), ()),
        num_steps=jnp.asarray(50), num_rejected=jnp.asarray(50), loss=jnp.asarray(jnp.nan),
    )
    with pytest.warns(UserWarning, match="rolled back"):
        step._tuned(SimpleNamespace(training=training), batched=False)
    assert isinstance(step.trained, TrainedEntropyFlow)
    assert step.trained.report == {"train_steps": 50, "rollbacks": 50, "final_loss": None}


def test_bad_options_are_refused():
    with strongly_correlated_gaussian().build_model():
        for options, match in (
            (dict(num_coupling_steps=0), "num_coupling_steps"),
            (dict(num_walkers=0), "num_walkers"),
            (dict(train_steps=-1), "train_steps"),
            (dict(hmc_warmup=0), "hmc_warmup"),
            (dict(target_acceptance=1.0), "target_acceptance"),
            (dict(target_accept=0.0), "target_accept"),
            (dict(initial_beta=0.0), "initial_beta"),
            (dict(dense_whitening="yes"), "dense_whitening"),
        ):
            with pytest.raises(ValueError, match=match):
                EntropyFlowMC(**options)
        with pytest.raises(ValueError, match="Nothing to save"):
            EntropyFlowMC().save("/nonexistent")
        with pytest.raises(ValueError, match="no trained kernel"):
            EntropyFlowMC.from_trained(EntropyFlowMC())


# ------------------------------------------------------------------ slow: funnel, German credit
# 20-d funnel with σ = 3 and the German-credit logistic regression (d = 25), defaults,
# through both drivers. pm.sample trains one kernel per chain; on the funnel a single
# chain's HMC warm-up sees a sliver of the neck, so the pm.sample run there samples with
# the kernel the fast driver trained on all chains (as the L2HMC tests do).

SLOW_RUN = dict(random_seed=2, progressbar=False)


@pytest.fixture(scope="module")
def funnel_pooled_run():
    reference = funnel(20)
    with reference.build_model():
        step = EntropyFlowMC()
        result = pns.sample(step, chains=8, draws=10_000, tune=1000, **SLOW_RUN)
    return reference, step, result


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_funnel_exact_under_the_fast_driver(funnel_pooled_run):
    reference, _, result = funnel_pooled_run
    check_exactness(result, reference).assert_passed()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_funnel_exact_under_pm_sample_with_a_pooled_kernel(funnel_pooled_run):
    reference, trained, _ = funnel_pooled_run
    with reference.build_model():
        step = EntropyFlowMC.from_trained(trained)
        result = pm.sample(step=step, chains=4, cores=1, draws=10_000, tune=1000,
                           compute_convergence_checks=False, **SLOW_RUN)
    check_exactness(result, reference).assert_passed()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_german_credit_exact_under_both_drivers():
    reference = german_credit()
    with reference.build_model():
        result = pns.sample(EntropyFlowMC(), chains=4, draws=2000, tune=1000, **SLOW_RUN)
        check_exactness(result, reference).assert_passed()
        result = pm.sample(step=EntropyFlowMC(), chains=2, cores=1, draws=2000, tune=1000,
                           compute_convergence_checks=False, **SLOW_RUN)
    check_exactness(result, reference).assert_passed()


# ------------------------------------------------------------------ tune=0 (issue 13, item 7)


def test_tune_0_trains_nothing_and_says_so():
    # With no warm-up there is nothing to train on: the chain samples as plain HMC, and the
    # step says so instead of spending the training budget at the first draw.
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = EntropyFlowMC()
        with pytest.warns(UserWarning, match="not trained.*tune=0.*plain HMC"):
            result = pns.sample(step, tune=0, draws=50, chains=2, random_seed=1,
                                progressbar=False)
        assert step.trained is None
        with pytest.warns(UserWarning, match="not trained"):
            idata = pm.sample(step=EntropyFlowMC(), tune=0, draws=20, chains=1, cores=1,
                              random_seed=1, progressbar=False,
                              compute_convergence_checks=False)
    for draws in (stats_of(result), stats_of(idata)):
        assert (draws["training_steps"].values == 0).all()
        assert (draws["training_time"].values == 0).all()
        # HMC at its initial settings: PyMC's 0.25 / d^¼, jittered path lengths.
        np.testing.assert_allclose(draws["step_size"].values, 0.25 / 2**0.25)
        assert len(np.unique(draws["n_steps"].values)) > 1
        assert np.isnan(draws["log_q_forward"].values).all()  # no flow proposals


# ------------------------------------------------------------------ validation (issue 13)


@pytest.mark.parametrize("bad", [-0.5, 0.0, float("nan"), 1e9])
def test_a_bad_initial_step_size_is_refused(bad):
    with strongly_correlated_gaussian().build_model():
        with pytest.raises(InvalidSettingError, match="step_size"):
            EntropyFlowMC(step_size=bad)


@pytest.mark.parametrize(
    "option, bad",
    [("learning_rate", float("nan")), ("final_learning_rate", 0.0), ("beta_rate", -1.0),
     ("initial_beta", float("inf")), ("target_acceptance", float("nan")),
     ("target_accept", 1.5), ("rewhiten_steps", -1), ("width", 0), ("depth", 0)],
)
def test_bad_numeric_options_are_refused_by_name(option, bad):
    with strongly_correlated_gaussian().build_model():
        with pytest.raises(InvalidSettingError, match=option):
            EntropyFlowMC(**{option: bad})


def saved_kernel(path, model):
    from pymc_neural_steps.target import build_layout

    nets = entropy_kernel.init_networks(jax.random.key(0), 2, width=8, step_size=0.3)
    trained = TrainedEntropyFlow(
        networks=jax.tree.map(np.asarray, nets), center=np.zeros(2),
        inverse_mass=np.array([1.0, 2.0]), beta=0.5, layout=build_layout(model).fingerprint(),
        options={"width": 8},
    )
    EntropyFlowMC.from_trained(trained, model=model).save(path)


def edit_saved(path, name_end=None, edit=None, **json_changes):
    """Change a saved array (name ending with ``name_end``) and/or kernel.json entries, and
    recompute the checksum as a forger would."""
    import json

    from pymc_neural_steps import io

    meta_path, arrays_path = path / io.METADATA_FILE, path / io.ARRAYS_FILE
    metadata = json.loads(meta_path.read_text())
    if name_end is not None:
        [entry] = [e for e in metadata["arrays"] if e["name"].endswith(name_end)]
        with np.load(arrays_path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays[entry["file"]] = edit(arrays[entry["file"]])
        np.savez(arrays_path, **arrays)
    metadata.update(json_changes)
    metadata["arrays_sha256"] = io._sha256(arrays_path)
    meta_path.write_text(json.dumps(metadata))


@pytest.mark.parametrize("log_step_size", [np.log(1e4), -800.0])
def test_a_saved_kernel_with_a_bad_step_size_is_refused(tmp_path, log_step_size):
    with strongly_correlated_gaussian().build_model() as model:
        saved_kernel(tmp_path, model)
        assert EntropyFlowMC.load(tmp_path)._trained_start.beta == 0.5  # untouched: loads
        edit_saved(tmp_path, ".log_step_size", lambda a: np.full_like(a, log_step_size))
        with pytest.raises(InvalidSettingError, match="step_size"):
            EntropyFlowMC.load(tmp_path)


def test_a_saved_kernel_with_a_bad_whitening_or_beta_is_refused(tmp_path):
    with strongly_correlated_gaussian().build_model() as model:
        saved_kernel(tmp_path, model)
        edit_saved(tmp_path, "['inverse_mass']", lambda a: np.array([1.0, -2.0]))
        with pytest.raises(InvalidSettingError, match="inverse_mass"):
            EntropyFlowMC.load(tmp_path)
        saved_kernel(tmp_path, model)
        edit_saved(tmp_path, beta=-1.0)
        with pytest.raises(InvalidSettingError, match="beta"):
            EntropyFlowMC.load(tmp_path)
