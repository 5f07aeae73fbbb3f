"""The shape every method takes: a ``ChainProgram`` of pure JAX functions of one chain.

A method is written once, as a ``ChainProgram`` (what a chain does in a warm-up iteration,
in a draw, when warm-up ends, and on which warm-up iterations it trains). Two drivers run
it and neither knows a method's internals: PyMC's per-draw loop (``steps/base.py``,
``NeuralStep.step``) and ``pymc_neural_steps.sample`` (``sampling.py``, all chains vmapped
in jitted ``lax.scan`` chunks).

Randomness is part of the shape: the key of iteration i of a chain with seed s is
``iteration_key(s, i) = fold_in(key(s), i)`` and its training after iteration i draws from
``training_key(s, i)``, so a chain's draws depend on its seed alone, not on the driver or on
how the iterations are split into calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COMMON_STATS",
    "DEFAULT_MODE",
    "TRAINING_TIME_STAT",
    "ChainProgram",
    "StatSpec",
    "iteration_key",
    "pack_stats",
    "training_key",
]


class StatSpec(NamedTuple):
    name: str
    dtype: type


# A stat that the drivers fill on the host (the program packs a placeholder): wall seconds
# spent in training runs since the previous draw, reported on the draw after the training.
TRAINING_TIME_STAT = "training_time"

# Stats every method reports, in this order at the start of its packed stats vector.
COMMON_STATS = (
    StatSpec("acceptance_rate", np.float64),
    StatSpec("diverging", bool),
    StatSpec("model_logp", np.float64),  # ArviZ conversion renames it to "lp"
    StatSpec("n_grad_evals", np.int64),
)

DEFAULT_MODE = "default"

# Separates a training run's randomness from the transitions' (``training_key``).
TRAINING_SALT = 0x7EA1


class ChainProgram(NamedTuple):
    """One method as pure functions of a single chain (``vmap``-able over chains).

    ``init(position, extras) -> carry``
    ``tune(key, carry, code, extras, mode) -> (carry, position, stats)``  one warm-up iteration
    ``end_tune(carry) -> carry``                                           freeze what was learned
    ``draw(key, carry, extras, mode) -> (carry, position, stats)``         one posterior draw
    ``refresh(carry, position, extras) -> carry``                          adopt a position set
                                                                           from outside (compound
                                                                           steps, new extras)
    ``stats`` is a float64 vector laid out as ``stat_specs``; ``code`` is the warm-up window
    code of ``adaptation.window_code``. ``mode`` is a static string chosen on the host
    (``mode_of``): a method that switches kernels (true gradient -> surrogate) compiles one
    version per mode instead of evaluating both under ``vmap``.

    Learning happens between iterations, on the host's schedule: after warm-up iteration i,
    if ``train_at(i, num_tune)`` (``num_tune`` is None when PyMC does not say), the drivers
    call ``train(key, carry)`` per chain, or ``pooled_train(key, carry)`` once on the
    batched carry of all chains where the method provides it (the fast driver), unless
    ``done_training(carry)`` (a host-side check, single or batched carry) says that
    learning has finished. When warm-up ends, before ``end_tune``, the drivers keep calling
    ``train`` / ``pooled_train`` while ``train_pending(carry)`` says that training is owed
    (a budget that a short or open-ended warm-up did not spend): the same compiled
    function finishes it, and its time counts as training time.
    """

    init: Callable
    tune: Callable
    end_tune: Callable
    draw: Callable
    refresh: Callable
    stat_specs: tuple[StatSpec, ...]
    # Optional: end warm-up with every chain's carry at once. Batched carry in and out.
    pooled_end_tune: Callable | None = None
    train: Callable | None = None
    pooled_train: Callable | None = None
    train_at: Callable[[int, int | None], bool] | None = None
    # carry (single or batched) -> mode name; "default" when absent.
    mode_of: Callable[[Any], str] | None = None
    # carry (single or batched) -> whether to skip the remaining training runs.
    done_training: Callable[[Any], bool] | None = None
    # carry (single or batched) -> whether training is owed when warm-up ends.
    train_pending: Callable[[Any], bool] | None = None


def iteration_key(seed, iteration):
    """The key of a chain's iteration ``iteration`` (warm-up and draws counted together)."""
    return jax.random.fold_in(jax.random.key(seed), iteration)


def training_key(seed, iteration):
    """The key of the training run after iteration ``iteration``."""
    return jax.random.fold_in(iteration_key(seed, iteration), TRAINING_SALT)


def pack_stats(*values) -> jax.Array:
    """Stats as one float64 vector (one host transfer per draw instead of one per stat)."""
    return jnp.stack([jnp.asarray(v, jnp.float64) for v in values])
