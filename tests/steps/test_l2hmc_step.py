"""L2HMC as a PyMC step: exact through both drivers, one pooled kernel in the fast driver,
one kernel per chain under pm.sample, a training budget that ignores the length of tune,
rollback of non-finite training steps, save and load."""


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import L2HMC, LayoutMismatchError
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.kernels import l2hmc as l2hmc_kernel
from pymc_neural_steps.programs.l2hmc import TRIM_GRID
from pymc_neural_steps.trained import TrainedL2HMC
from pymc_neural_steps.validation import InvalidSettingError
from pymc_neural_steps.testing import (
    check_exactness,
    funnel,
    rotated_gaussian,
    strongly_correlated_gaussian,
)

# Small enough for a unit test, long enough to train the SCG far past HMC's ESS.
OPTIONS = dict(train_steps=1000)
RUN = dict(draws=1000, tune=300, random_seed=3, progressbar=False)


class RecordingL2HMC(L2HMC):
    """L2HMC that keeps every carry it ends warm-up with (one per chain, or one batched)."""

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
        step = RecordingL2HMC(**OPTIONS)
        result = pns.sample(step, chains=4, discard_tuned_samples=False, **RUN)
    return reference, step, result


def test_exact_under_the_fast_driver(pooled_run):
    reference, _, result = pooled_run
    check_exactness(result, reference).assert_passed()


def test_fast_driver_trains_one_kernel_on_the_pooled_ensemble(pooled_run):
    _, step, result = pooled_run
    [(carry, batched)] = step.tuned_carries
    assert batched
    params = leaves(carry.training.params)
    for leaf in params:  # every chain ends with the very same networks
        assert leaf.shape[0] == 4
        for chain in range(1, 4):
            np.testing.assert_array_equal(leaf[chain], leaf[0])
    # ... and the same whitening, but its own position and walkers.
    np.testing.assert_array_equal(carry.training.context.center[1:], carry.training.context.center[:1].repeat(3, 0))
    walkers = np.asarray(carry.training.walkers)
    assert not np.array_equal(walkers[0], walkers[1])
    assert not np.array_equal(carry.hmc.state.position[0], carry.hmc.state.position[1])
    # The networks learned (they start with zero outputs), unless the end-of-budget guard
    # put back the best kernel scored in training, which can be the untrained one (it is,
    # with these settings, on some CPUs: float rounding decides where the ESJD loss steps).
    restored = bool(np.asarray(carry.best.restored)[0])
    assert step.trained.report["restored_best"] == restored
    if restored:  # the best kernel's networks (its ε may since have been trimmed)
        for net in ("x_net", "v_net"):
            for a, b in zip(leaves(getattr(carry.training.params, net)),
                            leaves(getattr(carry.best.params, net))):
                np.testing.assert_array_equal(a, b)
    else:
        assert np.abs(np.asarray(carry.training.params.x_net.output.weight[0])).max() > 0
    assert step.trained is not None and step.trained.layout == step.layout.fingerprint()
    # One ensemble of ~num_walkers for all chains: each chain holds 64 / 4 = 16 of them,
    # each loss uses them plus as many burn-in draws, (T + 1) forward gradients per start;
    # each of the rounds also scores the kernel twice on the walkers.
    warm, draws = stats_of(result, "warmup_sample_stats"), stats_of(result)
    steps = warm["training_steps"].values.sum(1) + draws["training_steps"].values.sum(1)
    np.testing.assert_array_equal(steps, OPTIONS["train_steps"])
    rounds = (warm["training_steps"].values > 0).sum(1) + (draws["training_steps"].values > 0).sum(1)
    np.testing.assert_array_equal(rounds, 20)
    grads = warm["training_grad_evals"].values.sum(1) + draws["training_grad_evals"].values.sum(1)
    # each chain's share: 16 walkers and as many burn-in draws per step, the 20 rounds'
    # scorings, and the end-of-budget stability trim's TRIM_GRID probes of its walkers
    expected = (OPTIONS["train_steps"] + 20) * 2 * 16 * 11 + TRIM_GRID * 16 * 11
    np.testing.assert_array_equal(grads, expected)
    # The gate's pilots are counted apart, once: 8 walkers per chain (32 / 4), each at
    # least a refresh and 64 learned transitions of 10 gradients, and 16 of HMC's.
    gate = warm["gate_grad_evals"].values.sum(1) + draws["gate_grad_evals"].values.sum(1)
    assert (gate >= 8 * (2 + 64 * 10 + 16)).all()
    assert ((warm["gate_grad_evals"].values > 0).sum(1) + (draws["gate_grad_evals"].values > 0).sum(1) == 1).all()
    # The decision and both figures, in the stats and the posterior's attrs.
    attrs = group_dataset(result).attrs
    assert attrs["gate_use_learned"] == 1 and bool(draws["learned_kernel"].values.all())
    assert attrs["gate_learned_ess_per_grad"] > attrs["gate_hmc_ess_per_grad"] > 0
    np.testing.assert_array_equal(draws["gate_hmc_ess_per_grad"].values,
                                  attrs["gate_hmc_ess_per_grad"])
    # The end-of-budget guard is reported once per chain when it restores the best kernel
    # (on some CPUs it does here, on others the SCG trains without collapsing).
    restored = bool(step.trained.report["restored_best"])
    count = int(warm["training_restored"].values.sum() + draws["training_restored"].values.sum())
    assert count == (4 if restored else 0)


def test_stats_are_honest(pooled_run):
    _, _, result = pooled_run
    draws, warm = stats_of(result), stats_of(result, "warmup_sample_stats")
    for name in ("acceptance_rate", "diverging", "lp", "n_grad_evals", "energy", "energy_error",
                 "step_size", "n_steps", "esjd", "training_loss", "training_time",
                 "training_grad_evals", "training_rollbacks", "training_restored"):
        assert name in draws, name
    # T = 10 true gradients per transition (the starting gradient is carried), the gate's
    # transitions per draw (one pooled decision: the same on every chain).
    transitions = draws["n_transitions"].values
    assert transitions.min() >= 1 and np.all(transitions == transitions.flat[0])
    np.testing.assert_array_equal(draws["n_grad_evals"].values, 10 * transitions)
    np.testing.assert_array_equal(draws["n_steps"].values, 10)
    # The first 200 warm-up iterations are HMC with jittered trajectory lengths.
    hmc_steps = warm["n_steps"].values[:, :200]
    assert len(np.unique(hmc_steps)) > 3
    np.testing.assert_array_equal(warm["n_grad_evals"].values[:, :200], hmc_steps)
    # The chain runs HMC for all of warm-up; the gate decides when it ends.
    assert not warm["learned_kernel"].values.astype(bool).any()
    np.testing.assert_array_equal(warm["n_transitions"].values, 1)
    # Training ran after iteration 199 and is reported on the iteration that follows.
    assert (warm["training_steps"].values[:, 200] > 0).all()
    assert (warm["training_steps"].values[:, :200] == 0).all()
    assert np.isfinite(warm["training_loss"].values[:, 200]).all()
    assert (warm["training_time"].values.sum(1) > 0).all()
    esjd = draws["esjd"].values
    assert (esjd >= 0).all() and esjd.mean() > 0
    # Training-free draws report no training.
    assert (draws["training_steps"].values[:, 1:] == 0).all()


def test_save_and_load_round_trip(pooled_run, tmp_path):
    reference, step, _ = pooled_run
    step.save(tmp_path / "kernel")
    with reference.build_model():
        loaded = L2HMC.load(tmp_path / "kernel")
        for a, b in zip(leaves(loaded._trained_start.networks), leaves(step.trained.networks)):
            np.testing.assert_array_equal(a, b)
        # d = 2 <= DENSE_MAX_DIM: the default whitening is dense, a (d, d) M⁻¹ round-trips.
        assert step.trained.inverse_mass.shape == (2, 2)
        np.testing.assert_array_equal(loaded._trained_start.inverse_mass, step.trained.inverse_mass)
        # A loaded kernel samples from the first draw: no warm-up, no training.
        result = pns.sample(loaded, draws=1000, tune=0, chains=4, random_seed=5, progressbar=False)
    check_exactness(result, reference).assert_passed()
    draws = stats_of(result)
    assert (draws["training_steps"].values == 0).all()
    np.testing.assert_array_equal(draws["n_steps"].values, 10)

    with pm.Model():
        pm.Normal("x", 0.0, 1.0, shape=3)
        with pytest.raises(LayoutMismatchError, match="x"):
            L2HMC.load(tmp_path / "kernel")


# ------------------------------------------------------------------ pm.sample


def test_exact_under_pm_sample_with_one_kernel_per_chain():
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = RecordingL2HMC(**OPTIONS)
        result = pm.sample(step=step, chains=3, cores=1, compute_convergence_checks=False, **RUN)
    check_exactness(result, reference).assert_passed()
    carries = step.tuned_carries
    assert len(carries) == 3 and not any(batched for _, batched in carries)
    # Every chain trained its own kernel from scratch: different networks and whitening.
    for chain in (1, 2):
        assert not np.array_equal(carries[0][0].training.params.x_net.output.weight,
                                  carries[chain][0].training.params.x_net.output.weight)
        assert not np.array_equal(carries[0][0].training.context.inverse_mass,
                                  carries[chain][0].training.context.inverse_mass)
    for carry, _ in carries:
        assert int(carry.training.num_steps) == OPTIONS["train_steps"]
    draws = stats_of(result)
    np.testing.assert_array_equal(draws["n_grad_evals"].values, 10 * draws["n_transitions"].values)
    # Per chain: all its 64 walkers and 64 burn-in draws, 11 forward gradients each, and
    # the stability trim's probes in the round that spends the budget.
    total = draws["training_grad_evals"].values.sum(1)  # what end_tune finished, if anything
    trim = TRIM_GRID * 64 * 11
    assert ((total % (2 * 64 * 11) == 0) | ((total - trim) % (2 * 64 * 11) == 0)).all()


# Slow (~50 s): the SCG runs above exercise the dense whitening (the default at d = 2).
@pytest.mark.slow
def test_rotated_gaussian_is_sampled_exactly_with_the_dense_whitening():
    # 20-d, eigenvalues 1e-2..1e2 under a random rotation: no diagonal whitening helps (with
    # it the benchmark saw bulk ESS 17 of 8000 and |z| = 4.06). The dense whitening from the
    # pooled HMC warm-up makes it easy; a short training budget keeps the test quick.
    reference = rotated_gaussian(20)
    with reference.build_model():
        step = RecordingL2HMC(train_steps=200)
        result = pns.sample(step, chains=4, draws=2000, tune=400, random_seed=11,
                            progressbar=False)
    check_exactness(result, reference).assert_passed()
    [(carry, _)] = step.tuned_carries
    inverse_mass = np.asarray(carry.training.context.inverse_mass)
    assert inverse_mass.shape == (4, 20, 20)
    np.testing.assert_array_equal(inverse_mass[1:], inverse_mass[:1].repeat(3, 0))
    assert stats_of(result)["acceptance_rate"].values.mean() > 0.3  # 0.48 on this seed


@pytest.mark.slow  # 25-30 s; training_rounds' placement is unit-tested in test_learned.py
def test_training_budget_does_not_depend_on_tune():
    # The HMC warm-up has a schedule of its own and training draws its randomness by
    # optimiser step, so however the budget is split over warm-up (PyMC 6 knows tune,
    # PyMC 5 does not and finishes at stop_tuning), one chain ends with the same kernel.
    reference = strongly_correlated_gaussian()
    kernels = {}
    with reference.build_model():
        # The diagonal whitening here (the dense one is the default at d = 2), so that the
        # step-level path that large models take is exercised too.
        step = RecordingL2HMC(train_steps=120, hmc_warmup=100, dense_whitening=False)
        for tune in (110, 160, 700, 60):
            step.tuned_carries.clear()
            result = pm.sample(step=step, chains=1, cores=1, draws=5, tune=tune, random_seed=9,
                               discard_tuned_samples=False, progressbar=False,
                               compute_convergence_checks=False)
            [(carry, _)] = step.tuned_carries
            assert int(carry.training.num_steps) == 120, tune
            stats = [stats_of(result, g) for g in ("warmup_sample_stats", "sample_stats")]
            assert sum(int(s["training_steps"].values.sum()) for s in stats) == 120, tune
            kernels[tune] = carry.training.params
            assert carry.training.context.inverse_mass.shape == (2,)
    for tune in (160, 700):
        for a, b in zip(leaves(kernels[110]), leaves(kernels[tune])):
            np.testing.assert_array_equal(a, b)
    # tune = 60 ends the HMC warm-up early (another whitening), yet trains the whole budget.
    assert not np.array_equal(kernels[60].log_step_size, kernels[110].log_step_size)


# ------------------------------------------------------------------ bad training


def test_non_finite_training_steps_are_rolled_back(monkeypatch):
    original = l2hmc_kernel.esjd_loss

    def sometimes_nan(nets, key, *args, **kwargs):
        loss, aux = original(nets, key, *args, **kwargs)
        # About one step in four diverges: NaN loss, hence NaN gradients.
        broken = jax.random.uniform(jax.random.fold_in(key, 77)) < 0.25
        return jnp.where(broken, jnp.nan, loss), aux

    monkeypatch.setattr(l2hmc_kernel, "esjd_loss", sometimes_nan)
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = RecordingL2HMC(train_steps=200)
        result = pns.sample(step, chains=2, draws=300, tune=260, random_seed=4,
                            discard_tuned_samples=False, progressbar=False)
    [(carry, _)] = step.tuned_carries
    rejected = int(carry.training.num_rejected[0])
    assert 20 < rejected < 90 and int(carry.training.num_steps[0]) == 200
    assert all(np.isfinite(leaf).all() for leaf in leaves(carry.training.params))
    warm = stats_of(result, "warmup_sample_stats")
    assert int(warm["training_rollbacks"].values[0].sum()) + int(
        stats_of(result)["training_rollbacks"].values[0].sum()) == rejected
    # The accepted steps' losses are finite; warm-up went on and the chain is sound.
    losses = warm["training_loss"].values
    assert np.isfinite(losses[warm["training_steps"].values > warm["training_rollbacks"].values]).all()
    assert np.isfinite(group_dataset(result)["x"].values).all()
    assert stats_of(result)["acceptance_rate"].values.mean() > 0.2


def test_a_training_run_that_never_succeeds_is_reported():
    from types import SimpleNamespace

    from pymc_neural_steps import ensemble
    from pymc_neural_steps.programs.l2hmc import Whitening

    with strongly_correlated_gaussian().build_model():
        step = L2HMC()
    nets = l2hmc_kernel.init_networks(jax.random.key(0), 2, 10)
    training = ensemble.TrainingState(
        params=nets, opt_state=(), walkers=jnp.zeros((4, 2)),
        context=Whitening(jnp.zeros(2), jnp.ones(2), ()),
        num_steps=jnp.asarray(50), num_rejected=jnp.asarray(50), loss=jnp.asarray(jnp.nan),
    )
    with pytest.warns(UserWarning, match="rolled back"):
        step._tuned(SimpleNamespace(training=training), batched=False)
    # What is kept is the untrained kernel, which is HMC and samples exactly.
    assert isinstance(step.trained, TrainedL2HMC)
    assert step.trained.report == {
        "train_steps": 50, "rollbacks": 50, "final_loss": None, "restored_best": False
    }


# ------------------------------------------------------------------ options


def test_bad_options_are_refused():
    with strongly_correlated_gaussian().build_model():
        for options, match in (
            (dict(num_steps=0), "num_steps"),
            (dict(num_walkers=0), "num_walkers"),
            (dict(train_steps=-1), "train_steps"),
            (dict(step_size_jitter=1.0), "jitter"),
            (dict(target_accept=1.0), "target_accept"),
            (dict(dense_whitening="yes"), "dense_whitening"),
        ):
            with pytest.raises(ValueError, match=match):
                L2HMC(**options)
        with pytest.raises(ValueError, match="Nothing to save"):
            L2HMC().save("/nonexistent")


# ------------------------------------------------------------------ the funnel (slow)
# Neal's funnel with σ = 3 in 20 dimensions. The learned kernel is exact there but mixes
# slowly in the neck variable v (ESS per MH step ≈ 0.004 with a kernel pooled over 16
# chains), so R-hat ≤ 1.01 needs tens of thousands of draws per chain. A kernel trained on
# ONE chain is worse: a single chain's HMC warm-up sees a sliver of v (variance 0.1–1
# instead of 9), the walkers start as narrow, and the kernel learns a step size that the
# chain, once it wanders, mostly rejects (acceptance 0.03–0.15 in 5 of 6 seeds). So the
# pm.sample test samples with a kernel trained by the fast driver.


@pytest.fixture(scope="module")
def funnel_pooled_run():
    reference = funnel(20)
    with reference.build_model():
        step = L2HMC()
        result = pns.sample(step, chains=16, draws=40_000, tune=1000, random_seed=2,
                            progressbar=False)
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
        step = L2HMC.from_trained(trained)
        # Warm-up iterations of a loaded kernel are plain transitions: a burn-in.
        result = pm.sample(step=step, chains=16, cores=2, mp_ctx="forkserver", draws=40_000,
                           tune=2000, random_seed=2, progressbar=False,
                           compute_convergence_checks=False)
    check_exactness(result, reference).assert_passed()


@pytest.mark.slow  # 30 s; restore_if_collapsed is unit-tested in test_l2hmc_program.py
def test_a_collapsed_kernel_is_replaced_by_the_best_one_scored():
    # Adam at rate 3 throws log ε far past the stability limit within a few steps: every
    # proposal is rejected, the ESJD gradient is exactly zero and training cannot recover.
    # The end-of-budget guard must hand the chain the best kernel scored on the way.
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        # The diagonal whitening: with the dense one (the default at d = 2) this SCG is close
        # to N(0, I) and these seeds did not collapse, which is good news but no test.
        step = RecordingL2HMC(train_steps=40, hmc_warmup=100, learning_rate=3.0,
                              final_learning_rate=1.0, dense_whitening=False)
        result = pns.sample(step, chains=2, draws=300, tune=150, random_seed=6,
                            discard_tuned_samples=False, progressbar=False)
    [(carry, _)] = step.tuned_carries
    warm, draws = stats_of(result, "warmup_sample_stats"), stats_of(result)
    restored = warm["training_restored"].values.sum(1) + draws["training_restored"].values.sum(1)
    np.testing.assert_array_equal(restored, 1)
    assert step.trained.report["restored_best"] is True
    # The best kernel, except that the stability trim may then have shortened its ε.
    final, best = carry.training.params, carry.best.params
    assert np.all(np.asarray(final.log_step_size) <= np.asarray(best.log_step_size))
    final = eqx.tree_at(lambda n: n.log_step_size, final, best.log_step_size)
    for a, b in zip(leaves(final), leaves(best)):
        np.testing.assert_array_equal(a, b)
    # Without the guard these chains accept nothing; with it, every chain moves. (The best
    # kernel by ESJD need not accept often: a long step accepted now and then scores above a
    # short one accepted always, so this asks for movement, not for a high rate.)
    assert draws["acceptance_rate"].values.mean(1).min() > 0
    assert (np.diff(group_dataset(result)["x"].values, axis=1) != 0).any(-1).any(1).all()
    assert np.isfinite(group_dataset(result)["x"].values).all()


# ------------------------------------------------------------------ tune=0 (issue 13, item 7)


def test_tune_0_trains_nothing_and_says_so():
    # The default budget (2000 optimiser steps, ~70 s) used to be spent at the first draw;
    # with no warm-up there is nothing to train on: the chain samples as plain HMC.
    reference = strongly_correlated_gaussian()
    with reference.build_model():
        step = L2HMC()
        with pytest.warns(UserWarning, match="not trained.*tune=0.*plain HMC"):
            result = pns.sample(step, tune=0, draws=50, chains=2, random_seed=1,
                                progressbar=False)
        assert step.trained is None
        with pytest.warns(UserWarning, match="not trained"):
            idata = pm.sample(step=L2HMC(), tune=0, draws=20, chains=1, cores=1,
                              random_seed=1, progressbar=False,
                              compute_convergence_checks=False)
    for draws in (stats_of(result), stats_of(idata)):
        assert (draws["training_steps"].values == 0).all()
        assert (draws["training_time"].values == 0).all()
        # HMC at its initial settings: PyMC's 0.25 / d^¼, jittered path lengths.
        np.testing.assert_allclose(draws["step_size"].values, 0.25 / 2**0.25)
        assert len(np.unique(draws["n_steps"].values)) > 1


def test_a_loaded_kernel_samples_tune_0_without_a_warning(tmp_path):
    import warnings

    with strongly_correlated_gaussian().build_model() as model:
        saved_kernel(tmp_path, model)
        step = L2HMC.load(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            result = pns.sample(step, tune=0, draws=20, chains=1, random_seed=1,
                                progressbar=False)
    np.testing.assert_array_equal(stats_of(result)["n_steps"].values, 10)


# ------------------------------------------------------------------ validation (issue 13)


@pytest.mark.parametrize("bad", [-0.5, 0.0, float("nan"), 1e9])
def test_a_bad_initial_step_size_is_refused(bad):
    with strongly_correlated_gaussian().build_model():
        with pytest.raises(InvalidSettingError, match="step_size"):
            L2HMC(step_size=bad)


@pytest.mark.parametrize(
    "option, bad",
    [("learning_rate", 0.0), ("final_learning_rate", float("nan")), ("scale", -1.0),
     ("burnin_scale", float("inf")), ("burnin_weight", -0.1), ("step_size_jitter", float("nan")),
     ("target_accept", float("nan")), ("hmc_warmup", 0), ("depth", 0), ("width", 0)],
)
def test_bad_numeric_options_are_refused_by_name(option, bad):
    with strongly_correlated_gaussian().build_model():
        with pytest.raises(InvalidSettingError, match=option):
            L2HMC(**{option: bad})


def saved_kernel(path, model, step_size=0.3):
    from pymc_neural_steps.target import build_layout

    nets = l2hmc_kernel.init_networks(jax.random.key(0), 2, 10, step_size=step_size)
    trained = TrainedL2HMC(
        networks=jax.tree.map(np.asarray, nets), center=np.zeros(2),
        inverse_mass=np.array([[1.0, 0.5], [0.5, 1.0]]), layout=build_layout(model).fingerprint(),
        options={"num_steps": 10},
    )
    L2HMC.from_trained(trained, model=model).save(path)


def edit_saved_array(path, name_end, edit):
    """Change the saved array whose name ends with ``name_end`` and recompute the checksum,
    as a forger would (``io.load_arrays`` then finds nothing wrong with the files)."""
    import json

    from pymc_neural_steps import io

    meta_path, arrays_path = path / io.METADATA_FILE, path / io.ARRAYS_FILE
    metadata = json.loads(meta_path.read_text())
    [entry] = [e for e in metadata["arrays"] if e["name"].endswith(name_end)]
    with np.load(arrays_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[entry["file"]] = edit(arrays[entry["file"]])
    np.savez(arrays_path, **arrays)
    metadata["arrays_sha256"] = io._sha256(arrays_path)
    meta_path.write_text(json.dumps(metadata))


@pytest.mark.parametrize("log_step_size", [np.log(1e4), -800.0])
def test_a_saved_kernel_with_a_bad_step_size_is_refused(tmp_path, log_step_size):
    # exp(log ε) above MAX_STEP_SIZE, or 0 (underflow): no chain could move with it.
    with strongly_correlated_gaussian().build_model() as model:
        saved_kernel(tmp_path, model)
        L2HMC.load(tmp_path)  # the untouched file loads
        edit_saved_array(tmp_path, ".log_step_size", lambda a: np.full_like(a, log_step_size))
        with pytest.raises(InvalidSettingError, match="step_size"):
            L2HMC.load(tmp_path)


def test_a_saved_kernel_with_a_bad_whitening_is_refused(tmp_path):
    with strongly_correlated_gaussian().build_model() as model:
        saved_kernel(tmp_path, model)
        edit_saved_array(tmp_path, "['inverse_mass']", lambda a: -a)
        with pytest.raises(InvalidSettingError, match="inverse_mass"):
            L2HMC.load(tmp_path)
