"""L2HMC's program pieces (programs/l2hmc.py) on hand-made Gaussians, without a PyMC model:
keep-best and the collapse guard, the dense estimates and their step size, the stability
trim (run and counted only in the round that spends the budget), and a chain that never
warms up (tune=0) sampling as plain HMC."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import ensemble
from pymc_neural_steps.kernels import l2hmc as l2hmc_kernel
from pymc_neural_steps.programs import l2hmc as program
from pymc_neural_steps.programs.l2hmc import BestKernel, Whitening

jax.config.update("jax_enable_x64", True)


def standard_normal(dim):
    return SimpleNamespace(dim=dim, logdensity=lambda x: -0.5 * jnp.sum(x**2))


def nets_with(step_size, dim=2, num_steps=10):
    return l2hmc_kernel.init_networks(jax.random.key(0), dim, num_steps, 4, 1, step_size=step_size)


def test_keep_best_keeps_the_higher_score():
    a, b = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    best = program.unscored(a)
    assert float(best.score) == -np.inf
    best = program.keep_best(best, a, jnp.asarray(1.0))
    best = program.keep_best(best, b, jnp.asarray(0.5))  # worse: not kept
    np.testing.assert_array_equal(best.params["w"], 0.0)
    best = program.keep_best(best, b, jnp.asarray(2.0))
    np.testing.assert_array_equal(best.params["w"], 1.0)
    assert float(best.score) == 2.0 and not bool(best.restored)


def test_a_collapsed_final_kernel_is_replaced_only_when_the_budget_is_spent():
    best = BestKernel({"w": jnp.ones(2)}, jnp.asarray(1.0), jnp.asarray(False))
    training = ensemble.TrainingState(
        params={"w": jnp.zeros(2)}, opt_state=(), walkers=jnp.zeros((1, 2)), context=(),
        num_steps=jnp.asarray(100), num_rejected=jnp.asarray(0), loss=jnp.asarray(0.0),
    )
    # Half of the best score or more: kept.
    out, kept, collapsed = program.restore_if_collapsed(training, best, jnp.asarray(0.6), 100)
    assert not bool(collapsed) and not bool(kept.restored)
    np.testing.assert_array_equal(out.params["w"], 0.0)
    # Below it, with budget left: kept (training may still recover).
    out, _, collapsed = program.restore_if_collapsed(training, best, jnp.asarray(0.1), 200)
    assert not bool(collapsed)
    # Below it at the end of the budget: the best kernel comes back, and it is recorded.
    out, kept, collapsed = program.restore_if_collapsed(training, best, jnp.asarray(0.1), 100)
    assert bool(collapsed) and bool(kept.restored)
    np.testing.assert_array_equal(out.params["w"], 1.0)


def test_dense_estimates_use_the_kept_positions_or_fall_back_to_the_diagonal():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    draws = jnp.asarray(rng.multivariate_normal([1.0, -1.0], cov, size=400))
    diagonal = jnp.ones(2)
    center, estimate, step_size = program.dense_estimates(
        draws, jnp.ones(400, bool), jnp.zeros(2), diagonal, 0.2
    )
    np.testing.assert_allclose(center, [1.0, -1.0], atol=0.15)
    np.testing.assert_allclose(estimate, cov, atol=0.2)
    # The narrowest direction of the diagonally whitened target had sd √0.1: ε grows by
    # about 1/√0.1, within the clip.
    assert 0.4 < float(step_size) < 0.2 * program.MAX_STEP_RESCALE
    # Fewer than MIN_DENSE_POINTS filled rows: the diagonal estimate, as a matrix.
    filled = jnp.arange(400) < program.MIN_DENSE_POINTS - 1
    center, estimate, step_size = program.dense_estimates(
        draws, filled, jnp.zeros(2), jnp.array([2.0, 3.0]), 0.2
    )
    np.testing.assert_array_equal(estimate, np.diag([2.0, 3.0]))
    np.testing.assert_array_equal(center, [0.0, 0.0])
    assert float(step_size) == 0.2


def test_dense_step_size_is_unchanged_for_an_uncorrelated_target_and_clipped():
    assert float(program.dense_step_size(0.3, jnp.ones(3), jnp.eye(3))) == 0.3
    nearly_singular = jnp.array([[1.0, 1.0 - 1e-9], [1.0 - 1e-9, 1.0]])
    scaled = program.dense_step_size(0.3, jnp.ones(2), nearly_singular)
    np.testing.assert_allclose(scaled, 0.3 * program.MAX_STEP_RESCALE)


def walkers(dim=2, n=64):
    return jax.random.normal(jax.random.key(3), (n, dim), jnp.float64)


def logdensity(x):
    return -0.5 * jnp.sum(x**2)


WHITE = Whitening(jnp.zeros(2), jnp.ones(2), ())


def test_the_stability_trim_leaves_a_stable_step_alone():
    factor = program.stability_factor(
        jax.random.key(1), nets_with(0.2), walkers(), logdensity, WHITE, jitter=0.5
    )
    assert float(factor) == 1.0


def test_the_stability_trim_pulls_the_jitter_range_below_the_leapfrog_limit():
    # Leapfrog on N(0, 1) is unstable for ε > 2: ε = 1.5 with jitter 0.5 reaches 2.25.
    factor = float(program.stability_factor(
        jax.random.key(1), nets_with(1.5), walkers(), logdensity, WHITE, jitter=0.5
    ))
    assert factor < 1.0
    assert 1.5 * factor * 1.5 <= 2.0 + 1e-9


def small_settings(**options):
    options = {**dict(num_steps=2, num_walkers=4, train_steps=6, hmc_warmup=20, width=4,
                      depth=1, step_size_jitter=0.5), **options}
    return program.l2hmc_settings(standard_normal(2), **options)


def test_the_trim_runs_and_is_counted_only_in_the_round_that_spends_the_budget():
    settings = small_settings()
    assert settings.per_round == 1  # six rounds of one step
    training = program.fresh_training(
        settings, jax.random.key(0), jax.random.key(1), jnp.zeros(2), jnp.ones(2), 0.5, ()
    )
    best = program.unscored(training.params)
    run = jax.jit(lambda key_data, t, b: program.run_round(settings, key_data, t, b, 4))
    key_data = jax.random.key_data(jax.random.key(5))
    per_pass = 4 * (settings.num_steps + 1)  # walkers × forward gradients per start
    for i in range(6):
        training, best, report = run(key_data, training, best)
        trim = program.TRIM_GRID * per_pass if i == 5 else 0
        # One step on 4 walkers + 4 burn-in draws, the two scorings, the trim if it ran.
        assert int(report.grad_evals) == (1 + 1) * 2 * per_pass + trim, i
        assert int(report.steps) == 1
    assert int(training.num_steps) == 6
    # Once the budget is spent a round does nothing and costs only its two scorings.
    before = training.params.log_step_size
    training, best, report = run(key_data, training, best)
    assert int(report.steps) == 0 and int(report.grad_evals) == 2 * per_pass
    assert float(training.params.log_step_size) == float(before)


def test_no_trim_without_jitter():
    settings = small_settings(step_size_jitter=0.0)
    training = SimpleNamespace(params=nets_with(0.5))
    out, grads = program.trim_step_size(settings, jax.random.key(0), training, True, 4)
    assert out is training and grads == 0


def test_a_chain_that_never_warms_up_samples_as_plain_hmc():
    prog = program.l2hmc_program(standard_normal(2), num_walkers=4, train_steps=10,
                                 hmc_warmup=20, width=4, depth=1)
    carry = prog.init(jnp.array([0.5, -0.5]), ())
    # tune=0: no training is owed, the chain stays in HMC mode ...
    assert not prog.train_pending(carry)
    assert prog.mode_of(carry) == program.learned.HMC_MODE
    carry = prog.end_tune(carry)
    draw = jax.jit(lambda k, c: prog.draw(k, c, (), program.learned.HMC_MODE))
    names = [s.name for s in prog.stat_specs]
    step_sizes = set()
    for i in range(5):
        carry, position, stats = draw(jax.random.key(i), carry)
        step_sizes.add(float(stats[names.index("step_size")]))
        assert int(stats[names.index("training_steps")]) == 0
    # ... at the initial step size 0.25 / d^¼, not adapted by the draws.
    # (to the last bits: exp(log(h)) may round differently from h on some CPUs)
    assert len(step_sizes) == 1 and np.isclose(step_sizes.pop(), 0.25 / 2**0.25, rtol=1e-12)
    assert int(carry.warmup_iteration) == 0 and not bool(carry.started)


def test_the_kernel_score_is_the_walkers_expected_squared_jump():
    tiny = program.kernel_score(jax.random.key(2), nets_with(0.01), walkers(), logdensity, WHITE)
    good = program.kernel_score(jax.random.key(2), nets_with(0.3), walkers(), logdensity, WHITE)
    assert 0 < float(tiny) < float(good)
    # A kernel whose every proposal is non-finite scores 0, never NaN.
    broken = program.step_scaled(nets_with(0.3), jnp.inf)
    assert float(program.kernel_score(jax.random.key(2), broken, walkers(), logdensity, WHITE)) == 0
