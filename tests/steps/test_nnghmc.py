"""NNgHMC through both drivers: exactness, honest counting, bad networks, prior swaps."""

import cloudpickle
import equinox as eqx
import jax
import jax.numpy as jnp
import arviz as az
import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import NNgHMC, TrainedNNgHMC
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.sensitivity import sensitivity_analysis
from pymc_neural_steps.programs.nnghmc import nnghmc_program, trains_after
from pymc_neural_steps.surrogate import default_spec, make_surrogate
from pymc_neural_steps.target import build_target
from pymc_neural_steps.testing import (
    Moments,
    Reference,
    check_exactness,
    eight_schools_noncentered,
    garch11,
    german_credit,
)
from pymc_neural_steps.testing import _posterior

FAST = dict(progressbar=False)
PM = dict(progressbar=False, compute_convergence_checks=False)


# --- targets -----------------------------------------------------------------------------
def linear_regression() -> Reference:
    """y ~ N(A x, 1), x ~ N(0, 10²): a correlated Gaussian posterior from a likelihood, so
    the surrogate has something to learn (the analytic targets are priors only)."""
    rng = np.random.default_rng(17)
    dim, rows = 5, 12
    design = rng.normal(size=(rows, dim)) * np.linspace(0.3, 2.0, dim)
    y = design @ rng.normal(size=dim) + rng.normal(size=rows)
    precision = design.T @ design + np.eye(dim) / 100.0
    cov = np.linalg.inv(precision)
    mean = cov @ design.T @ y

    def build_model():
        with pm.Model() as model:
            x = pm.Normal("x", 0.0, 10.0, shape=dim)
            pm.Normal("y", pm.math.dot(design, x), 1.0, observed=y)
        return model

    sd = np.sqrt(np.diag(cov))
    moments = {f"x[{i}]": Moments(m, s) for i, (m, s) in enumerate(zip(mean, sd, strict=True))}
    return Reference("linear_regression", build_model, moments, "analytic: conjugate Gaussian")


LOGISTIC_ROWS, LOGISTIC_DIM = 200, 5


def logistic_regression(prior_sd: float, *, name="beta", dim=LOGISTIC_DIM, prior_mean=0.0) -> pm.Model:
    rng = np.random.default_rng(42)
    design = rng.normal(size=(LOGISTIC_ROWS, LOGISTIC_DIM))
    y = rng.binomial(1, 1 / (1 + np.exp(-(design @ rng.normal(0, 0.5, LOGISTIC_DIM)))))
    with pm.Model() as model:
        beta = pm.Normal(name, prior_mean, prior_sd, shape=dim)
        pm.Bernoulli("y", logit_p=pm.math.dot(design[:, :dim], beta), observed=y)
    return model


def reference_from(result, name: str, build_model) -> Reference:
    """Posterior moments (with MCSEs) of a long run, as a Reference to check against."""
    posterior = _posterior.posterior_dataset(result)
    values = posterior[[name]]
    mean = values.mean(_posterior.SAMPLE_DIMS)[name].values
    sd = values.std(_posterior.SAMPLE_DIMS, ddof=1)[name].values
    mcse_mean = _posterior.mcse_mean(values)[name].values
    mcse_sd = _posterior.mcse_sd(values)[name].values
    rows = zip(mean, sd, mcse_mean, mcse_sd, strict=True)
    moments = {f"{name}[{i}]": Moments(*row) for i, row in enumerate(rows)}
    return Reference(f"{name}_long_run", build_model, moments, "long JaxHMC run")


def stats_of(result, group="sample_stats"):
    return group_dataset(result, group)


def assert_draws_use_no_true_gradient(result):
    stats = stats_of(result)
    # The first draw reports the true gradients of the check when warm-up ended (if any).
    assert int(stats["n_grad_evals"].values[:, 1:].sum()) == 0
    np.testing.assert_array_equal(stats["n_surrogate_evals"].values, stats["n_steps"].values)
    assert (stats["n_steps"].values > 0).all()


# --- the training schedule ------------------------------------------------------------------
def test_training_schedule_known_and_open_ended():
    points = [i + 1 for i in range(1000) if trains_after(i, 1000)]
    # every 100 from 150, moved 25 past a mass-matrix change (after 150, 250, 450, 950),
    # and none in the last 50 iterations, where the step size adapts to the surrogate
    assert points == [175, 275, 350, 475, 550, 650, 750, 850]
    open_ended = [i + 1 for i in range(1000) if trains_after(i, None)]
    assert open_ended[:6] == points[:6] and max(open_ended) <= 950
    assert [i + 1 for i in range(200) if trains_after(i, 200)] == [175]  # short: once
    assert not any(trains_after(i, 20) for i in range(20))  # too short to learn anything


# --- pm.sample ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eight_schools_pm():
    reference = eight_schools_noncentered()
    with reference.build_model():
        step = NNgHMC()
        idata = pm.sample(step=step, draws=2000, tune=1000, chains=2, cores=1, random_seed=3,
                          discard_tuned_samples=False, **PM)
    return reference, step, idata


def test_exact_under_pm_sample_with_one_surrogate_per_chain(eight_schools_pm):
    reference, step, idata = eight_schools_pm
    check_exactness(idata, reference).assert_passed()
    warm = stats_of(idata, "warmup_sample_stats")
    # each chain trained its own network (different data, different fits)
    trained_at = [np.flatnonzero(warm["training"].values[c]) for c in range(2)]
    assert all(len(t) >= 1 for t in trained_at)
    assert warm["surrogate_error"].values[0, -1] != warm["surrogate_error"].values[1, -1]
    # the host measured the training time and reported it on the draw after each training
    times = warm["training_time"].values
    trained_now = warm["training"].values
    assert (times[trained_now] > 0).all() and (times[~trained_now] == 0).all()
    # ... and the check owed when warm-up ends on the first draw
    after = stats_of(idata)["training_time"].values[:, 0]
    assert step.training_time == pytest.approx(times.sum() + after.sum())
    assert step.trained is not None  # the last chain's warm-up result


def test_counting_in_each_chain_s_mode(eight_schools_pm):
    _, _, idata = eight_schools_pm
    stats = stats_of(idata)
    for chain in range(2):
        grads = stats["n_grad_evals"].values[chain]
        surrogate = stats["n_surrogate_evals"].values[chain]
        steps = stats["n_steps"].values[chain]
        if surrogate.sum() > 0:  # this chain's surrogate passed
            np.testing.assert_array_equal(surrogate, steps)
            # no true gradient in the draws; the first reports the end-of-warm-up check's
            assert grads[1:].sum() == 0 and grads[0] > 0
        else:
            np.testing.assert_array_equal(grads, steps)
            assert surrogate.sum() == 0


# --- the fast driver ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regression_fast():
    reference = linear_regression()
    with reference.build_model():
        step = NNgHMC()
        result = pns.sample(step, draws=1000, tune=1000, chains=4, random_seed=5,
                            discard_tuned_samples=False, **FAST)
    return reference, step, result


# eight schools (35-50 s) is the second model: --runslow.
@pytest.mark.parametrize("which", [
    "linear_regression", pytest.param("eight_schools_noncentered", marks=pytest.mark.slow),
])
def test_exact_under_the_fast_driver(which, regression_fast):
    if which == "linear_regression":
        reference, _, result = regression_fast
    else:
        reference = eight_schools_noncentered()
        with reference.build_model():
            result = pns.sample(NNgHMC(), draws=1000, tune=1000, chains=4, random_seed=2, **FAST)
    check_exactness(result, reference).assert_passed()


def test_draw_phase_of_a_passed_surrogate_costs_no_true_gradient(regression_fast):
    _, step, result = regression_fast
    assert step.trained.passed and step.trained.report["relative_error"] < 0.2
    assert_draws_use_no_true_gradient(result)
    stats = stats_of(result)
    assert float(stats["acceptance_rate"].mean()) > 0.6
    assert not stats["surrogate_nonfinite"].values.any()
    warm = stats_of(result, "warmup_sample_stats")
    before = ~np.cumsum(warm["training"].values, axis=1).astype(bool)  # before any training
    np.testing.assert_array_equal(warm["n_surrogate_evals"].values[before], 0)
    assert (warm["n_grad_evals"].values[before] >= warm["n_steps"].values[before]).all()


def test_the_fast_driver_trains_one_network_for_all_chains(regression_fast):
    _, step, result = regression_fast
    warm = stats_of(result, "warmup_sample_stats")
    for name in ("training", "surrogate_error", "training_loss", "training_time"):
        values = warm[name].values  # identical in every chain (NaN before the first fit)
        np.testing.assert_array_equal(values, np.broadcast_to(values[:1], values.shape), name)
    attrs = group_dataset(result).attrs
    assert attrs["training_time"] > 0
    # The check that ends warm-up (``final_check``) is reported on the first draw.
    draws = stats_of(result, "sample_stats")["training_time"].values[0]
    total = np.nansum(warm["training_time"].values[0]) + np.nansum(draws)
    assert attrs["training_time"] == pytest.approx(total)


def test_assessment_gradients_are_added_to_the_next_draw():
    # One chain of the program by hand: warm up on the true gradient, train, and look at
    # the gradients the next warm-up iteration reports.
    with linear_regression().build_model() as model:
        target = build_target(model)
    program = nnghmc_program(target, spec=default_spec(target.dim), train_steps=200)
    carry = jax.jit(program.init)(target.initial_position, ())
    tune = jax.jit(program.tune, static_argnames="mode")
    for i in range(120):
        carry, _, _ = tune(jax.random.key(i), carry, 1, (), "default")  # SLOW: collecting
    trained = jax.jit(program.train)(jax.random.key(999), carry)
    assert int(trained.pending_grad_evals) > 0
    assert bool(trained.just_trained) and float(trained.report.trainings) == 1
    mode = program.mode_of(trained)
    _, _, stats = tune(jax.random.key(120), trained, 1, (), mode)
    unpaid = trained._replace(pending_grad_evals=jnp.zeros((), int))
    _, _, plain = tune(jax.random.key(120), unpaid, 1, (), mode)
    names = [s.name for s in program.stat_specs]
    grads, flag = names.index("n_grad_evals"), names.index("training")
    assert stats[grads] - plain[grads] == int(trained.pending_grad_evals)
    assert stats[flag] == 1


def test_failed_training_warns_and_keeps_the_true_gradient():
    with linear_regression().build_model() as model:
        step = NNgHMC(model=model)
        target = build_target(model)
    program = nnghmc_program(target, spec=step.spec)
    carry = jax.jit(program.init)(target.initial_position, ())
    carry = carry._replace(report=carry.report._replace(
        trainings=jnp.asarray(3.0), accept_true=jnp.asarray(0.8), accept_surrogate=jnp.asarray(0.3)
    ))
    assert program.mode_of(carry) == "default"
    with pytest.warns(UserWarning, match="true gradient.*0.30 vs 0.80"):
        step._tuned(carry, batched=False)


# --- bad networks -----------------------------------------------------------------------------
def forced(model, surrogate, *, step_size=0.2, **options):
    """An NNgHMC that samples with ``surrogate`` from the start (no training)."""
    layout = pns.target.build_layout(model)
    trained = TrainedNNgHMC.from_surrogate(surrogate, layout=layout, step_size=step_size)
    return NNgHMC.from_trained(trained, model=model, check_region=False, **options)


def test_a_random_network_is_still_exact_only_slower(regression_fast):
    reference, _, good = regression_fast
    model = reference.build_model()
    # Untrained weights: gradient errors of the order of the gradient itself. A field that
    # bad does not U-turn like the Hamiltonian flow, so the path length is fixed here;
    # mixing is slow (hence the long run), the answer is right.
    random_net = make_surrogate(default_spec(5, width=20), jax.random.key(7))
    random_net = eqx.tree_at(lambda s: s.g_scale, random_net, jnp.full(5, 0.5))
    step = forced(model, random_net, path_length=1.5)
    result = pns.sample(step, draws=20000, tune=400, chains=4, random_seed=11, model=model, **FAST)
    check_exactness(result, reference).assert_passed()
    assert_draws_use_no_true_gradient(result)
    bad_acceptance = float(stats_of(result)["acceptance_rate"].mean())
    assert bad_acceptance < float(stats_of(good)["acceptance_rate"].mean()) - 0.3


def test_a_network_returning_nan_never_moves_the_chain():
    model = linear_regression().build_model()
    spec = default_spec(5, width=8)
    net = make_surrogate(spec, jax.random.key(0))
    nan_net = jax.tree.map(lambda a: a * jnp.nan if isinstance(a, jax.Array) else a, net)
    result = pns.sample(forced(model, nan_net), draws=50, tune=30, chains=2, random_seed=1,
                        model=model, discard_tuned_samples=False, **FAST)
    for group in ("posterior", "warmup_posterior"):
        x = group_dataset(result, group)["x"].values
        np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1], x.shape))
    stats = stats_of(result)
    assert stats["surrogate_nonfinite"].values.all()
    assert (stats["acceptance_rate"].values == 0).all()
    assert int(stats["n_grad_evals"].sum()) == 0


# --- no warm-up -------------------------------------------------------------------------------
def test_tune_zero_warns_and_samples_with_the_true_gradient():
    reference = linear_regression()
    with reference.build_model():
        with pytest.warns(UserWarning, match="nothing to train on"):
            idata = pm.sample(step=NNgHMC(), tune=0, draws=100, chains=1, cores=1,
                              random_seed=1, **PM)
        with pytest.warns(UserWarning, match="nothing to train on"):
            result = pns.sample(NNgHMC(), tune=0, draws=100, chains=2, random_seed=1, **FAST)
    for res in (idata, result):
        stats = stats_of(res)
        np.testing.assert_array_equal(stats["n_grad_evals"].values, stats["n_steps"].values)
        assert int(stats["n_surrogate_evals"].sum()) == 0
        assert np.isfinite(group_dataset(res)["x"].values).all()


# --- prior swap -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logistic_wide():
    model = logistic_regression(10.0)
    step = NNgHMC(model=model)
    pns.sample(step, draws=200, tune=1000, chains=4, random_seed=1, model=model, **FAST)
    return step


@pytest.fixture(scope="module")
def tight_reference():
    model = logistic_regression(0.1)
    result = pns.sample(pns.JaxHMC(model=model), draws=4000, tune=500, chains=4, random_seed=3,
                        model=model, **FAST)
    return reference_from(result, "beta", lambda: logistic_regression(0.1))


def test_prior_swap_without_retraining_matches_the_tight_posterior(logistic_wide, tight_reference):
    assert logistic_wide.trained.passed
    tight = logistic_regression(0.1)
    step = NNgHMC.from_trained(logistic_wide, model=tight)
    # No training: one check of the surrogate on the new posterior, after iteration 75.
    checks = [i for i in range(500) if step._functions()["program"].train_at(i, 500)]
    assert checks == [74]
    result = pns.sample(step, draws=2000, tune=500, chains=4, random_seed=2, model=tight,
                        discard_tuned_samples=False, **FAST)
    check_exactness(result, tight_reference).assert_passed()
    stats, warm = stats_of(result), stats_of(result, "warmup_sample_stats")
    assert float(stats["acceptance_rate"].mean()) >= 0.5
    assert int(stats["n_grad_evals"].sum()) == 0
    # Warm-up's only true gradients: the check's 32 trajectories, a few hundred in all.
    assert 0 < int(warm["n_grad_evals"].sum()) < 1000
    assert not warm["training"].values.any()
    assert_draws_use_no_true_gradient(result)


def test_prior_swap_far_from_the_trained_posterior_falls_back_with_a_warning(logistic_wide):
    # The prior pins beta near 2, tens of posterior sds from where the surrogate was
    # trained: before the region check, the chains stood still (R-hat 3.2) without a word.
    far = logistic_regression(0.05, prior_mean=2.0)
    step = NNgHMC.from_trained(logistic_wide, model=far)
    with pytest.warns(UserWarning, match="does not fit this model's posterior"):
        result = pns.sample(step, draws=500, tune=500, chains=4, random_seed=2, model=far,
                            compute_convergence_checks=False, **FAST)
    stats = stats_of(result)
    assert int(stats["n_surrogate_evals"].sum()) == 0  # the draws use the true gradient
    assert float(az.rhat(result)["beta"].max()) < 1.01
    assert float(az.ess(result)["beta"].min()) > 400
    assert not step.trained.passed


def test_prior_swap_refuses_a_model_whose_parameters_differ(logistic_wide):
    with pytest.raises(pns.LayoutMismatchError, match="'beta'.*shape"):
        NNgHMC.from_trained(logistic_wide, model=logistic_regression(0.1, dim=4))
    with pytest.raises(pns.LayoutMismatchError, match="'coef'"):
        NNgHMC.from_trained(logistic_wide, model=logistic_regression(0.1, name="coef"))
    with pm.Model() as transformed:
        pm.HalfNormal("beta", 1.0, shape=LOGISTIC_DIM)
    with pytest.raises(pns.LayoutMismatchError, match="beta"):
        NNgHMC.from_trained(logistic_wide, model=transformed)


def test_sensitivity_analysis_table_and_forest_plot(logistic_wide):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    models = {"N(0, 10)": logistic_regression(10.0), "N(0, 1)": logistic_regression(1.0)}
    analysis = sensitivity_analysis(logistic_wide, models, draws=300, tune=200, chains=2,
                                    random_seed=4)
    table = analysis.table
    assert list(table.index) == [f"beta[{i}]" for i in range(LOGISTIC_DIM)]
    assert list(table.columns.get_level_values(0).unique()) == list(models)
    # a tighter prior shrinks towards 0
    wide_abs = table[("N(0, 10)", "mean")].abs()
    tight_abs = table[("N(0, 1)", "mean")].abs()
    assert (tight_abs <= wide_abs + 0.05).all()
    assert (analysis.diagnostics["n_grad_evals"] == 0).all()
    assert (analysis.diagnostics["max_rhat"] < 1.05).all()
    assert analysis.forest is not None


def test_max_rhat_flags_chains_that_disagree():
    from pymc_neural_steps import sensitivity

    def result(values):  # ArviZ 0.x takes groups as keywords, ArviZ 1.x as one dict
        try:
            return az.from_dict(posterior={"b": values})
        except TypeError:
            return az.from_dict({"posterior": {"b": values}})

    rng = np.random.default_rng(0)
    agree = result(rng.normal(size=(2, 400)))
    apart = result(rng.normal(size=(2, 400)) + np.array([[0.0], [3.0]]))
    assert sensitivity._max_rhat(agree) < 1.05
    assert sensitivity._max_rhat(apart) > 1.05


def test_steps_survive_pickling_for_worker_processes(logistic_wide):
    # PyMC sends step methods to its worker processes with cloudpickle.
    swapped = NNgHMC.from_trained(logistic_wide, model=logistic_regression(0.1))
    for step in (logistic_wide, swapped):
        clone = cloudpickle.loads(cloudpickle.dumps(step))
        for a, b in ((clone.trained, step.trained), (clone._trained_start, step._trained_start)):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.spec == b.spec and a.layout == b.layout
                for x, y in zip(a.surrogate_leaves, b.surrogate_leaves, strict=True):
                    np.testing.assert_array_equal(x, y)


def test_a_step_that_never_trained_cannot_be_reused():
    model = logistic_regression(1.0)
    with pytest.raises(ValueError, match="no trained surrogate"):
        NNgHMC.from_trained(NNgHMC(model=model), model=model)


def test_bad_options_are_refused():
    with logistic_regression(1.0):
        with pytest.raises(ValueError, match="target_accept"):
            NNgHMC(target_accept=1.0)
        with pytest.raises(ValueError, match="tolerance"):
            NNgHMC(tolerance=-0.1)


# --- published references (long) ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "seed"), [(garch11, 8), (german_credit, 10)], ids=["garch11", "german_credit"]
)
def test_published_references_under_the_fast_driver(factory, seed):
    reference = factory()
    with reference.build_model():
        step = NNgHMC()
        result = pns.sample(step, draws=2000, tune=1000, chains=4, random_seed=seed, **FAST)
    check_exactness(result, reference).assert_passed()
    assert step.trained.passed
    assert_draws_use_no_true_gradient(result)


@pytest.mark.slow
def test_garch11_under_pm_sample_in_worker_processes():
    reference = garch11()
    with reference.build_model():
        idata = pm.sample(step=NNgHMC(), draws=1500, tune=1000, chains=2, cores=2,
                          mp_ctx="spawn", random_seed=9, **PM)
    check_exactness(idata, reference).assert_passed()
