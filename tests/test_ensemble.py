"""The ensemble training loop: guarded steps roll back non-finite updates, budgets split
freely, and it is generic enough to train both learned kernels. No PyMC needed."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pymc_neural_steps import ensemble
from pymc_neural_steps.kernels import entropy

jax.config.update("jax_enable_x64", True)


# A toy problem: fit the mean of the walkers' data. The walkers carry a clock, so a test
# can make the objective fail at a chosen step.


class Walkers(eqx.Module):
    data: jax.Array  # (n, 2)
    clock: jax.Array  # (n,): steps taken, the same for every walker


def toy_trainer(fail_at=-1, how="loss", learning_rate=0.1):
    def objective(params, key, walkers, context):
        residual = walkers.data - params["mean"]
        loss = jnp.mean(jnp.sum(residual**2, axis=-1))
        failing = walkers.clock[0] == fail_at
        if how == "loss":  # NaN loss (and so NaN gradients)
            loss = jnp.where(failing, jnp.nan, loss)
        else:  # finite loss, NaN gradient: d/dw sqrt(|w - w|) at 0 is inf, times 0
            def kink(mean):
                return 0.0 * jnp.sum(jnp.sqrt(jnp.abs(mean - jax.lax.stop_gradient(mean))))

            # cond, not where: where would send the NaN gradient through every step.
            loss = loss + jax.lax.cond(failing, kink, lambda mean: 0.0 * jnp.sum(mean), params["mean"])
        return loss, {"spread": jnp.std(walkers.data)}

    def advance(key, params, walkers, aux, context):
        noise = 0.01 * jax.random.normal(key, walkers.data.shape)
        return Walkers(walkers.data + noise, walkers.clock + 1)

    return ensemble.Trainer(
        objective, advance, optax.adam(learning_rate), monitor=lambda aux: aux["spread"]
    )


def toy_state(trainer):
    data = jnp.asarray(np.random.default_rng(0).normal([3.0, -1.0], 0.5, (32, 2)))
    params = {"mean": jnp.zeros(2), "label": jnp.arange(3)}  # an integer leaf rides along
    return ensemble.init(trainer, params, Walkers(data, jnp.zeros(32, jnp.int64)))


def test_a_nan_loss_is_rolled_back_and_training_continues():
    for how in ("loss", "gradient"):
        trainer = toy_trainer(fail_at=3, how=how)
        step = jax.jit(lambda s, k: ensemble.train_step(trainer, s, k))
        state = toy_state(trainer)
        key = jax.random.key(1)
        history = []
        for i in range(8):
            before = state
            state, (accepted, loss, _) = step(state, jax.random.fold_in(key, i))
            history.append(bool(accepted))
            if i == 3:
                assert not accepted, how
                # "gradient": the loss is finite, only its gradient is not.
                assert np.isnan(float(loss)) == (how == "loss")
                # Parameters and optimiser state are exactly the last finite ones.
                for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                                jax.tree.leaves((before.params, before.opt_state))):
                    np.testing.assert_array_equal(a, b)
                np.testing.assert_array_equal(state.loss, before.loss)
                # The walkers moved on, so the next attempt sees new data.
                assert int(state.walkers.clock[0]) == 4
        assert history == [True, True, True, False, True, True, True, True], how
        assert int(state.num_steps) == 8 and int(state.num_rejected) == 1
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))
        np.testing.assert_array_equal(state.params["label"], np.arange(3))


def test_training_through_a_failure_still_converges():
    trainer = toy_trainer(fail_at=5)
    state, summary = jax.jit(lambda s: ensemble.train(trainer, s, jax.random.key(2), 300))(
        toy_state(trainer)
    )
    assert int(summary.num_steps) == 300 and int(summary.num_rejected) == 1
    assert np.isfinite(float(summary.mean_loss)) and np.isfinite(float(summary.last_loss))
    data_mean = np.asarray(state.walkers.data).mean(axis=0)
    np.testing.assert_allclose(state.params["mean"], data_mean, atol=0.05)


def test_a_budget_split_into_rounds_trains_exactly_as_one_run():
    trainer = toy_trainer(learning_rate=0.05)
    run = jax.jit(lambda s, n: ensemble.train(trainer, s, jax.random.key(3), n))
    whole, summary = run(toy_state(trainer), 12)
    part, first = run(toy_state(trainer), 5)
    part, second = run(part, 7)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(part)):
        np.testing.assert_array_equal(a, b)
    assert int(first.num_steps) + int(second.num_steps) == int(summary.num_steps) == 12
    # A traced step count of zero (a finished budget) changes nothing.
    same, nothing = run(whole, 0)
    assert int(nothing.num_steps) == 0 and np.isnan(float(nothing.mean_loss))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)


def test_adam_with_decay_decays_to_the_final_fraction():
    opt = ensemble.adam_with_decay(1e-2, 100, final_fraction=0.1, clip_norm=None)
    params = jnp.zeros(())
    state = opt.init(params)
    steps = []
    for _ in range(101):
        update, state = opt.update(jnp.ones(()), state, params)
        steps.append(-float(update))
    # Adam's first steps are ≈ the learning rate for a constant gradient.
    np.testing.assert_allclose(steps[0], 1e-2, rtol=1e-3)
    np.testing.assert_allclose(steps[100], 1e-3, rtol=1e-3)


# The proposal-entropy sampler trains through the same loop with its own objective and its
# β controller as the adapted context (L2HMC's use is tested with the step, tests/steps).

MEAN = jnp.array([1.0, -1.0])
SD = jnp.array([2.0, 0.5])


def gaussian_logdensity(x):
    return -0.5 * jnp.sum(((x - MEAN) / SD) ** 2)


def walkers0(n=32):
    return MEAN + SD * jax.random.normal(jax.random.key(4), (n, 2))


def test_the_loop_trains_the_entropy_sampler_with_its_beta_controller():
    kernel = entropy.build_kernel(gaussian_logdensity)

    def objective(nets, key, walkers, beta):
        return entropy.entropy_objective(nets, key, walkers, gaussian_logdensity, beta)

    def advance(key, nets, walkers, aux, beta):
        states = jax.vmap(entropy.init, (0, None))(walkers, gaussian_logdensity)
        keys = jax.random.split(key, walkers.shape[0])
        states, _ = jax.vmap(kernel, (0, 0, None))(keys, states, nets)
        return states.position

    def adapt(beta, aux):
        return entropy.beta_update(beta, aux.mean_acceptance)

    trainer = ensemble.Trainer(objective, advance, optax.adam(1e-3), adapt=adapt,
                               monitor=lambda aux: aux.mean_acceptance)
    nets = entropy.init_networks(jax.random.key(7), 2, width=8, use_r=False)
    state = ensemble.init(trainer, nets, walkers0(), context=jnp.asarray(1.0))
    state, summary = jax.jit(lambda s: ensemble.train(trainer, s, jax.random.key(8), 20))(state)
    assert int(summary.num_steps) == 20 and int(summary.num_rejected) == 0
    assert float(state.context) != 1.0  # β adapted with every accepted step
    assert np.isfinite(np.asarray(state.walkers)).all()
