"""Training a learned transition kernel on an ensemble of walkers (L2HMC §3, entropy §3.3).

Both learned kernels of this package are trained the same way: a batch of walkers is
advanced by the *current* kernel, and after each move the kernel's parameters take one
optimiser step on an objective evaluated from the walkers' positions (L2HMC: the expected
squared jump of ``kernels.l2hmc.esjd_loss``; the proposal-entropy sampler: its
``entropy_objective``). The walkers are the "parallel chains" of Levy et al. (2018, §5,
200 in the paper) and the bootstrapped buffer of Li et al. (2021, §3.3).

This module holds the method-agnostic part, as pure functions of a ``TrainingState``:

* ``Trainer``: what a method supplies -- its objective, how its walkers move, the optax
  optimiser, and optionally how a carried context (e.g. the entropy sampler's β) adapts.
* ``train_step``: one optimiser step with a guard. A step whose loss, gradients or updated
  parameters are not finite is *rejected*: parameters and optimiser state stay at their
  last finite values (a rollback), the rejection is counted, and training goes on. So a
  diverging run never corrupts the kernel the chain will use.
* ``train``: up to ``num_steps`` guarded steps in one compiled loop; the number may be
  traced, so finishing a budget of unknown remainder compiles once.
* ``adam_with_decay``: the paper's optimiser, Adam with exponentially decaying rate.

Only the inexact-array leaves of the parameters are trained (``eqx.is_inexact_array``),
so fixed integer or boolean leaves (L2HMC's masks) ride along untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

__all__ = [
    "Trainer",
    "TrainingState",
    "TrainingSummary",
    "adam_with_decay",
    "init",
    "train",
    "train_step",
]

# objective(params, key, walkers, context) -> (loss, aux)
Objective = Callable[[Any, jax.Array, Any, Any], tuple[jax.Array, Any]]
# advance(key, params, walkers, aux, context) -> walkers
Advance = Callable[[jax.Array, Any, Any, Any, Any], Any]
# adapt(context, aux) -> context
Adapt = Callable[[Any, Any], Any]


class Trainer(NamedTuple):
    """A method's training recipe (static: functions and an optax transformation).

    ``objective(params, key, walkers, context) -> (loss, aux)`` is minimised; ``aux`` is
    whatever the method needs afterwards (e.g. the proposals it made). ``advance(key,
    params, walkers, aux, context) -> walkers`` moves the walkers with the parameters the
    loss was evaluated at -- for L2HMC, an MH accept/reject of the loss's own proposals,
    which costs nothing extra. ``adapt(context, aux) -> context`` updates carried
    non-gradient quantities (None: the context is fixed). ``monitor(aux) -> scalar`` is the
    value reported as the acceptance rate of the training batch (None: not reported).
    """

    objective: Objective
    advance: Advance
    optimizer: optax.GradientTransformation
    adapt: Adapt | None = None
    monitor: Callable[[Any], jax.Array] | None = None


class TrainingState(NamedTuple):
    params: Any  # the whole module, trainable and fixed leaves
    opt_state: Any  # optax state of the trainable leaves
    walkers: Any  # pytree whose leaves have the ensemble as leading axis
    context: Any  # carried, adapted by ``Trainer.adapt`` (e.g. β); may be ()
    num_steps: jax.Array  # optimiser steps attempted so far (accepted + rejected)
    num_rejected: jax.Array  # steps rolled back because something was not finite
    loss: jax.Array  # loss of the last accepted step (NaN before the first)


class TrainingSummary(NamedTuple):
    """What one call of ``train`` did (scalars; means over its accepted steps)."""

    num_steps: jax.Array
    num_rejected: jax.Array
    mean_loss: jax.Array  # NaN when no step was accepted
    last_loss: jax.Array
    mean_monitor: jax.Array  # mean of ``Trainer.monitor`` (NaN when absent)


def _trainable(params):
    return eqx.filter(params, eqx.is_inexact_array)


def adam_with_decay(
    learning_rate: float,
    num_steps: int,
    final_fraction: float = 0.1,
    clip_norm: float | None = 10.0,
) -> optax.GradientTransformation:
    """Adam whose rate decays exponentially to ``final_fraction`` of its start over ``num_steps``.

    The paper decays 1e-3 by ×0.96 every 1000 of 5000 steps (to 0.82 of the start); over a
    shorter budget a steeper decay lets the first steps move fast and the last ones settle.
    A global-norm clip bounds the damage of one bad batch (None: no clipping).
    """
    schedule = optax.exponential_decay(
        init_value=learning_rate,
        transition_steps=max(int(num_steps), 1),
        decay_rate=final_fraction,
    )
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
    return optax.chain(*parts, optax.adam(schedule))


def init(trainer: Trainer, params, walkers, context=()) -> TrainingState:
    dtype = jax.tree.leaves(walkers)[0].dtype
    return TrainingState(
        params=params,
        opt_state=trainer.optimizer.init(_trainable(params)),
        walkers=walkers,
        context=context,
        num_steps=jnp.zeros((), jnp.int64),
        num_rejected=jnp.zeros((), jnp.int64),
        loss=jnp.full((), jnp.nan, dtype),
    )


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def train_step(
    trainer: Trainer, state: TrainingState, key: jax.Array
) -> tuple[TrainingState, tuple[jax.Array, jax.Array, Any]]:
    """One guarded optimiser step; returns (state, (accepted, loss, aux)).

    The walkers always advance (with the parameters the loss was evaluated at, which are
    finite), so a rejected step still moves the ensemble and the next attempt sees new data.
    """
    key_loss, key_advance = jax.random.split(key)
    trainable, fixed = eqx.partition(state.params, eqx.is_inexact_array)

    def objective(trainable):
        return trainer.objective(
            eqx.combine(trainable, fixed), key_loss, state.walkers, state.context
        )

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
    updates, opt_state = trainer.optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    accepted = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_trainable)

    params = eqx.combine(_select(accepted, new_trainable, trainable), fixed)
    opt_state = _select(accepted, opt_state, state.opt_state)
    walkers = trainer.advance(key_advance, state.params, state.walkers, aux, state.context)
    context = state.context
    if trainer.adapt is not None:
        context = _select(accepted, trainer.adapt(context, aux), context)
    new_state = TrainingState(
        params=params,
        opt_state=opt_state,
        walkers=walkers,
        context=context,
        num_steps=state.num_steps + 1,
        num_rejected=state.num_rejected + (~accepted).astype(jnp.int64),
        loss=jnp.where(accepted, loss, state.loss),
    )
    return new_state, (accepted, loss, aux)


def train(
    trainer: Trainer, state: TrainingState, key: jax.Array, num_steps
) -> tuple[TrainingState, TrainingSummary]:
    """Up to ``num_steps`` (may be traced) guarded steps; step i uses ``fold_in(key, i)``.

    Keys are indexed by the running step count, so a budget split into several calls
    draws the same randomness as one call of the whole budget.
    """
    dtype = state.loss.dtype
    num_steps = jnp.maximum(jnp.asarray(num_steps, jnp.int64), 0)

    def body(i, carry):
        state, loss_sum, monitor_sum, accepted_count = carry
        step_key = jax.random.fold_in(key, state.num_steps)
        state, (accepted, loss, aux) = train_step(trainer, state, step_key)
        monitor = (
            jnp.full((), jnp.nan, dtype) if trainer.monitor is None else trainer.monitor(aux)
        )
        loss_sum = loss_sum + jnp.where(accepted, loss, 0.0)
        monitor_sum = monitor_sum + jnp.where(accepted, monitor, 0.0)
        return state, loss_sum, monitor_sum, accepted_count + accepted

    zero = jnp.zeros((), dtype)
    start = state
    state, loss_sum, monitor_sum, accepted = jax.lax.fori_loop(
        0, num_steps, body, (state, zero, zero, jnp.zeros((), jnp.int64))
    )
    denominator = jnp.where(accepted > 0, accepted, jnp.nan)
    summary = TrainingSummary(
        num_steps=state.num_steps - start.num_steps,
        num_rejected=state.num_rejected - start.num_rejected,
        mean_loss=loss_sum / denominator,
        last_loss=state.loss,
        mean_monitor=monitor_sum / denominator,
    )
    return state, summary
