"""NNgHMC's program pieces (programs/nnghmc.py) on a hand-made Gaussian, without a PyMC
model: the fields, the schedule, λ from U-turns, recording in warm-up, the assessment's
starting points, the assessment and region check with an exact and a useless surrogate,
pooled training, and the trained kernel read off a carry."""

from functools import partial
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation
from pymc_neural_steps.programs import nnghmc as program
from pymc_neural_steps.surrogate import default_spec

jax.config.update("jax_enable_x64", True)

DIM = 2
PRIOR_SD = 10.0
LIK_PRECISION = 4.0  # the likelihood dominates: a surrogate that ignores it is poor


def fake_target(dim=DIM):
    """prior x ~ N(0, 10²), likelihood term -½·4·‖x − 1‖², no potentials."""

    def density_terms(x):
        prior = -0.5 * jnp.sum(x**2) / PRIOR_SD**2
        lik = -0.5 * LIK_PRECISION * jnp.sum((x - 1.0) ** 2)
        return prior, lik, jnp.zeros(())

    def logdensity(x):
        return sum(density_terms(x))

    return SimpleNamespace(dim=dim, logdensity=logdensity, density_terms=density_terms)


class LinearLikelihoodGradient(eqx.Module):
    """scale · ∇ℓ of ``fake_target``: exact at scale 1, no likelihood at all at 0."""

    scale: jax.Array

    def __call__(self, x):
        return self.scale * LIK_PRECISION * (1.0 - x)


def settings_with(surrogate=None, **options):
    target = fake_target()
    settings = program.nnghmc_settings(target, spec=default_spec(DIM), **options)
    if surrogate is not None:
        arrays, structure = eqx.partition(surrogate, eqx.is_array)
        settings = settings._replace(arrays0=arrays, structure=structure)
    return settings


def batched_carry(settings, positions):
    return jax.vmap(lambda x: program.init_carry(settings, x, ()))(jnp.asarray(positions))


# --- fields ------------------------------------------------------------------------------
def test_true_field_splits_the_learned_part_from_the_prior():
    target = fake_target()
    x = jnp.array([0.3, -2.0])
    value, gradient, learned = program.true_field(target, ())(x)
    np.testing.assert_allclose(value, target.logdensity(x))
    np.testing.assert_allclose(gradient, jax.grad(target.logdensity)(x))
    np.testing.assert_allclose(learned, LIK_PRECISION * (1.0 - x))


def test_logdensity_is_minus_infinity_where_the_model_gives_nan():
    target = SimpleNamespace(dim=1, density_terms=lambda x: (jnp.nan * x[0], x[0], x[0]))
    assert program.logdensity_fn(target, ())(jnp.ones(1)) == -np.inf


def test_surrogate_gradient_adds_the_exact_prior_gradient():
    target = fake_target()
    x = jnp.array([0.3, -2.0])
    exact = program.surrogate_gradient(target, LinearLikelihoodGradient(jnp.ones(())), ())
    np.testing.assert_allclose(exact(x), jax.grad(target.logdensity)(x))
    prior_only = program.surrogate_gradient(target, LinearLikelihoodGradient(jnp.zeros(())), ())
    np.testing.assert_allclose(prior_only(x), -x / PRIOR_SD**2)


def test_state_at_uses_the_field_in_use():
    settings = settings_with(LinearLikelihoodGradient(jnp.zeros(())))
    x = jnp.array([0.3, -2.0])
    on_true = program.state_at(settings, settings.arrays0, jnp.asarray(False), x, ())
    on_surrogate = program.state_at(settings, settings.arrays0, jnp.asarray(True), x, ())
    np.testing.assert_allclose(on_true.gradient, jax.grad(settings.target.logdensity)(x))
    np.testing.assert_allclose(on_surrogate.gradient, -x / PRIOR_SD**2)
    np.testing.assert_allclose(on_surrogate.logdensity, on_true.logdensity)


# --- the schedule ----------------------------------------------------------------------------
def test_region_check_comes_after_75_iterations_or_mid_warm_up():
    assert program.region_check_after(None) == program.REGION_CHECK == 75
    assert program.region_check_after(1000) == 75
    assert program.region_check_after(100) == 50
    assert program.region_check_after(1) == 1


def test_trains_after_follows_first_and_every():
    points = [i + 1 for i in range(2000) if program.trains_after(i, 2000, first=300, every=400)]
    assert points[0] >= 300 and all(p <= 2000 - program.SURROGATE_WARMUP for p in points)
    assert not any(program.trains_after(i, None) for i in range(program.FIRST_TRAINING - 1))


def test_the_schedule_of_a_fresh_chain_and_of_trained_starts():
    fresh = settings_with()
    train_at, pending = program.schedule(fresh)

    def carry(passed, final_checked, rewarm_owed=(False, False), region_checked=(True, True)):
        return SimpleNamespace(passed=np.array(passed), final_checked=np.array(final_checked),
                               rewarm_owed=np.array(rewarm_owed),
                               region_checked=np.array(region_checked))

    assert pending(carry([True, True], [False, False]))  # a passed surrogate: checked again
    assert not pending(carry([True, True], [True, True]))
    assert not pending(carry([False, False], [False, False]))
    # Handed back to the true gradient too late: a re-warm-up is owed.
    assert pending(carry([False, False], [True, True], rewarm_owed=[True, True]))
    assert [i for i in range(1000) if train_at(i, 1000)] == [
        i for i in range(1000) if program.trains_after(i, 1000)
    ]
    checked = fresh._replace(trained=object(), checks_region=True)
    train_at, pending = program.schedule(checked)
    assert [i + 1 for i in range(200) if train_at(i, 200)] == [75]
    assert pending(carry([True, True], [True, True], region_checked=[True, False]))
    assert not pending(carry([True, True], [True, True]))
    assert pending(carry([False, False], [True, True], rewarm_owed=[True, True]))
    train_at, pending = program.schedule(checked._replace(checks_region=False))
    assert pending is None and not any(train_at(i, 200) for i in range(200))


def test_mode_of_refuses_chains_that_disagree():
    assert program.mode_of(SimpleNamespace(passed=np.array([True, True]))) == "surrogate"
    assert program.mode_of(SimpleNamespace(passed=np.array([False]))) == "default"
    try:
        program.mode_of(SimpleNamespace(passed=np.array([True, False])))
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("disagreeing chains were not refused")


# --- one chain -------------------------------------------------------------------------------
def test_path_length_is_half_the_mean_u_turn_time_and_resets_with_the_metric():
    start = program.UTurnEstimate(jnp.zeros(()), jnp.zeros(()))
    update = partial(program.path_length_update, floor=0.0)
    uturn, lam = update(start, 1.0, 10, 0.1, adaptation.SLOW)
    np.testing.assert_allclose(lam, 0.5)  # one U-turn at time 1.0
    uturn, lam = update(uturn, lam, 0, 0.1, adaptation.SLOW)
    np.testing.assert_allclose(lam, 0.5)  # no U-turn seen: unchanged
    np.testing.assert_allclose(uturn.count, 1.0)
    uturn, lam = update(uturn, lam, 30, 0.1, adaptation.SLOW_END)
    np.testing.assert_allclose(lam, 1.0)  # (1 + 3) / 2 / 2
    assert float(uturn.count) == 0.0 and float(uturn.total) == 0.0  # the metric changes


def test_path_length_never_falls_below_hmcs():
    start = program.UTurnEstimate(jnp.zeros(()), jnp.zeros(()))
    _, lam = program.path_length_update(start, 1.0, 10, 0.1, adaptation.SLOW)
    np.testing.assert_allclose(lam, np.pi / 2)  # the U-turn estimate 0.5 is floored
    _, lam = program.path_length_update(start, 1.0, 50, 0.1, adaptation.SLOW)
    np.testing.assert_allclose(lam, 2.5)  # a longer estimate is kept


def test_warm_up_records_pairs_only_from_the_first_slow_window():
    settings = settings_with(buffer_size=4096)
    carry = program.init_carry(settings, jnp.array([0.5, 1.5]), ())
    tune = jax.jit(lambda k, c, code: program.tune_iteration(settings, k, c, code, ()))
    for i in range(5):
        carry, _, stats = tune(jax.random.key(i), carry, adaptation.FAST)
    assert int(carry.buffer.count) == 0
    carry, _, stats = tune(jax.random.key(5), carry, adaptation.SLOW)
    assert int(carry.buffer.count) > 0
    stored = carry.buffer.positions[0]
    np.testing.assert_allclose(carry.buffer.gradients[0], LIK_PRECISION * (1.0 - stored))
    assert stats.shape == (len(program.STAT_SPECS),)


def test_refresh_charges_a_true_gradient_only_for_a_moved_position():
    settings = settings_with()
    x = jnp.array([0.5, 1.5])
    carry = program.init_carry(settings, x, ())
    assert int(program.refresh(settings, carry, x, ()).refresh_evals) == 0
    moved = program.refresh(settings, carry, x + 1.0, ())
    assert int(moved.refresh_evals) == 1 and int(moved.refresh_logp_evals) == 0
    np.testing.assert_allclose(moved.state.gradient, jax.grad(settings.target.logdensity)(x + 1.0))


# --- assessment and training (batched carry) ---------------------------------------------------
def test_buffered_starts_come_from_held_out_slots():
    settings = settings_with(buffer_size=1024)
    carry = batched_carry(settings, np.zeros((2, DIM)))
    slot_ids = jnp.broadcast_to(jnp.arange(1024.0)[:, None], (1024, DIM))
    buffer = carry.buffer._replace(
        positions=jnp.stack([slot_ids, slot_ids]), count=jnp.full(2, 1024)
    )
    starts = program.buffered_starts(jax.random.key(0), carry._replace(buffer=buffer), 16,
                                     settings.holdout)
    assert starts.shape == (2, 16, DIM)
    slots = np.asarray(starts[..., 0]).astype(int)
    assert np.asarray(settings.holdout)[slots].all()


def test_assess_an_exact_surrogate_matches_the_true_gradient():
    settings = settings_with(LinearLikelihoodGradient(jnp.ones(())))
    carry = batched_carry(settings, np.ones((2, DIM)))
    starts = jnp.ones((2, 4, DIM)) + 0.1
    accept_true, accept_surrogate, spent, error = program.assess(
        settings, jax.random.key(1), settings.arrays0, carry, starts
    )
    np.testing.assert_allclose(accept_surrogate, accept_true, atol=1e-8)
    assert float(error) < 1e-8  # identical pairs: no spread in the shortfall
    assert spent.shape == (2,) and np.all(np.asarray(spent) >= 4 * 2)


def test_region_check_keeps_a_fitting_surrogate_and_drops_a_useless_one():
    for scale, fits in ((1.0, True), (0.0, False)):
        settings = settings_with(LinearLikelihoodGradient(jnp.asarray(scale)))
        carry = batched_carry(settings, np.ones((2, DIM)))
        carry = carry._replace(passed=jnp.ones(2, bool), region_checked=jnp.zeros(2, bool))
        checked = program.pooled_region_check(settings, jax.random.key(2), carry)
        assert bool(checked.region_checked.all())
        assert bool(checked.passed.all()) is fits and bool(checked.passed.any()) is fits
        assert int(checked.pending_grad_evals.min()) > 0
        if not fits:  # back on the true gradient: the carried field is the true one
            true_gradient = jax.vmap(jax.grad(settings.target.logdensity))(carry.state.position)
            np.testing.assert_allclose(checked.state.gradient, true_gradient)


def test_a_passed_surrogate_is_checked_again_and_a_failing_one_dropped():
    for scale, fits in ((1.0, True), (0.0, False)):
        settings = settings_with(LinearLikelihoodGradient(jnp.asarray(scale)))
        carry = batched_carry(settings, np.ones((2, DIM)))
        assert not bool(carry.final_checked.any())
        switched_at = 0.3  # the true gradient's step size when the surrogate passed
        carry = carry._replace(
            passed=jnp.ones(2, bool), step_floor=jnp.full(2, program.STEP_FLOOR * switched_at)
        )
        checked = program.final_check(settings, jax.random.key(2), carry)
        assert bool(checked.final_checked.all())
        assert bool(checked.passed.all()) is fits and bool(checked.passed.any()) is fits
        if not fits:  # dual averaging restarts at the true gradient's step size of the switch
            step_size, _ = jax.vmap(adaptation.warmup_final)(checked.warmup)
            np.testing.assert_allclose(step_size, switched_at)
            assert float(checked.step_floor.max()) == 0.0
        assert int(checked.pending_grad_evals.min()) > 0  # the check's gradients are counted
    # The drivers' training call runs it for a passed surrogate, and trains otherwise.
    settings = settings_with(buffer_size=64, train_steps=2, assess_trajectories=2)
    carry = batched_carry(settings, np.ones((2, DIM)))
    step = jax.jit(lambda k, c: program.pooled_step(settings, k, c))
    assert bool(step(jax.random.key(3), carry._replace(passed=jnp.ones(2, bool))).final_checked.all())
    assert not bool(step(jax.random.key(3), carry).final_checked.any())


def test_pooled_train_fits_assesses_and_shares_one_network():
    settings = settings_with(buffer_size=1024, train_steps=50, assess_trajectories=8)
    carry = batched_carry(settings, np.zeros((2, DIM)))
    positions = jax.random.normal(jax.random.key(3), (2, 1024, DIM)) + 1.0
    buffer = carry.buffer._replace(
        positions=positions,
        gradients=LIK_PRECISION * (1.0 - positions),
        count=jnp.full(2, 1024),
    )
    trained = jax.jit(lambda k, c: program.pooled_train(settings, k, c))(
        jax.random.key(4), carry._replace(buffer=buffer)
    )
    assert np.asarray(trained.report.trainings).tolist() == [1.0, 1.0]
    assert bool(trained.just_trained.all()) and int(trained.pending_grad_evals.min()) > 0
    for leaf in jax.tree.leaves(trained.surrogate):  # one network, held by both chains
        np.testing.assert_array_equal(leaf[0], leaf[1])
    np.testing.assert_array_equal(trained.passed[0], trained.passed[1])
    # Once passed, a direct call leaves the carry alone.
    done = trained._replace(passed=jnp.ones(2, bool))
    again = program.pooled_train(settings, jax.random.key(5), done)
    assert np.asarray(again.report.trainings).tolist() == [1.0, 1.0]


def test_trained_from_carry_takes_medians_and_the_mean_metric():
    settings = settings_with()
    carry = batched_carry(settings, np.zeros((3, DIM)))
    carry = carry._replace(
        step_size=jnp.array([0.1, 0.2, 0.9]),
        path_length=jnp.array([1.0, 2.0, 3.0]),
        inverse_mass=jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]),
    )
    layout = {"dim": DIM}
    trained = program.trained_from_carry(
        jax.device_get(carry), batched=True, spec=default_spec(DIM), layout=layout
    )
    assert trained.step_size == 0.2 and trained.path_length == 2.0
    np.testing.assert_allclose(trained.inverse_mass, [2.0, 2.0])
    assert not trained.passed and trained.report["trainings"] == 0
    assert trained.report["loss"] is None  # NaN is written as null


def _carry_on_posterior_draws(settings, chains=2, seed=0):
    """Chains whose buffers hold draws of ``fake_target``'s posterior, N(1, 1/4.01)."""
    carry = batched_carry(settings, np.ones((chains, DIM)))
    capacity = carry.buffer.positions.shape[1]
    sd = 1.0 / np.sqrt(LIK_PRECISION + 1.0 / PRIOR_SD**2)
    draws = 1.0 + sd * np.random.default_rng(seed).standard_normal((chains, capacity, DIM))
    buffer = carry.buffer._replace(positions=jnp.asarray(draws), count=jnp.full(chains, capacity))
    return carry._replace(buffer=buffer, passed=jnp.ones(chains, bool))


def test_mixing_gate_keeps_an_exact_surrogate_and_vetoes_a_wrong_one():
    # scale -1 points the likelihood's pull the wrong way: its moves are rejected and the
    # pilot's autocorrelation does not die out. (A surrogate that merely ignores the
    # likelihood, scale 0, still wins here: in 2-d its ESS per step at one log density
    # beats HMC's per ~10 gradients -- the gate scores cost, not acceptance.)
    for scale, wins in ((1.0, True), (-1.0, False)):
        settings = settings_with(LinearLikelihoodGradient(jnp.asarray(scale)), buffer_size=256)
        carry = _carry_on_posterior_draws(settings)
        gate, grads, logps = jax.jit(lambda k, c: program.mixing_gate(settings, k, c))(jax.random.key(4), carry)
        assert bool(gate.decided) and bool(gate.use_learned) is wins, gate
        assert bool(gate.learned_resolved) is wins and bool(gate.hmc_resolved)
        # every true gradient and log density of the pilots is counted, per chain
        assert grads.shape == logps.shape == (2,) and int(grads.min()) > 0
        walkers = -(-program.gates.PILOT_WALKERS // 2)
        assert int(logps[0]) == walkers * (program.gates.LEARNED_PILOT_STEPS + 1)


def test_final_check_runs_the_gate_until_it_wins_and_its_veto_drops_the_surrogate():
    settings = settings_with(LinearLikelihoodGradient(-jnp.ones(())), buffer_size=256, tolerance=1.0)
    carry = _carry_on_posterior_draws(settings)
    # tolerance 1: the acceptance check passes anything, so only the gate can drop it
    checked = program.final_check(settings, jax.random.key(5), carry)
    assert not bool(checked.passed.any()) and not bool(checked.gate.use_learned.any())
    assert int(checked.pending_logp_evals.min()) > 0
    report = program.trained_from_carry(checked, batched=True, spec=default_spec(DIM),
                                        layout={"dim": DIM}).report
    assert report["gate_use_learned"] is False and report["gate_hmc_ess_per_grad"] > 0
    # after the first gate only the surrogate is piloted again, against HMC's first score
    won = carry._replace(gate=carry.gate._replace(
        decided=jnp.ones(2, bool), use_learned=jnp.ones(2, bool), hmc_score=jnp.full(2, 1e-9),
        hmc_resolved=jnp.ones(2, bool)))
    good = settings_with(LinearLikelihoodGradient(jnp.ones(())), buffer_size=256, tolerance=1.0)
    again = program.final_check(good, jax.random.key(6), won)
    assert bool(again.passed.all()) and int(again.pending_logp_evals.min()) > 0
    np.testing.assert_allclose(again.gate.hmc_score, 1e-9)
    gate, grads, _ = program.surrogate_gate(settings, jax.random.key(7), won)
    assert not bool(gate.use_learned) and int(grads.max()) == 0  # no true gradient


def test_a_chain_handed_back_late_re_warms_on_the_true_gradient():
    settings = settings_with(LinearLikelihoodGradient(-jnp.ones(())), buffer_size=256, tolerance=1.0)
    carry = _carry_on_posterior_draws(settings)
    collected = carry.warmup._replace(welford=carry.warmup.welford._replace(
        count=jnp.full(2, 40.0)))
    checked = program.final_check(settings, jax.random.key(5), carry._replace(warmup=collected))
    # The veto hands the chains back: the variance collected under the surrogate is
    # dropped, and with no true-gradient warm-up since, a re-warm-up is owed.
    assert not bool(checked.passed.any()) and bool(checked.rewarm_owed.all())
    assert float(checked.warmup.welford.count.max()) == 0.0
    _, pending = program.schedule(settings)
    assert pending(checked)
    # (pooled_step routes owing chains to rewarm_chains; this surrogate cannot be fitted,
    # so its other branch cannot be traced here.)
    step = jax.jit(lambda k, c: program.rewarm_chains(settings, k, c))
    rewarmed = step(jax.random.key(6), checked._replace(pending_grad_evals=jnp.full(2, 7)))
    assert not pending(rewarmed) and not bool(rewarmed.rewarm_owed.any())
    assert not bool(rewarmed.passed.any())
    # Every trajectory's gradients are counted, on top of what was pending.
    assert int(rewarmed.pending_grad_evals.min()) > 7 + program.rewarms.REWARM
    assert int(rewarmed.true_since.min()) == program.rewarms.REWARM
    step_size, _ = jax.vmap(adaptation.warmup_final)(rewarmed.warmup)
    assert bool(jnp.all(jnp.isfinite(step_size)))
