"""Training loops, written with optax: functions from (parameters, data) to parameters.

§1  Gradient regression for NNgHMC (Li et al. 2019, §3; ``algorithms.md`` §1):
    ``fit_gradient_surrogate`` fits a ``GradientSurrogate`` to pairs (x, ∇ℓ(x)) recorded
    along warm-up trajectories. MSE loss on standardised outputs, Adam with a learning rate
    that warms up, then decays (cosine), warm start from the previous network, ~10 % of the
    pairs held out to report the relative gradient error.

§2  Kernel training on an ensemble of chains (L2HMC's ESJD loss, the proposal-entropy
    objective; ``algorithms.md`` §2-§3): reserved, see the end of this module.

Everything here is jit-able: the data come as fixed-size ring buffers with a traced count
(``kernels/nnghmc.GradientBuffer``), optionally one per chain (a leading chain axis), and the
number of optimisation steps and the batch size are static.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pymc_neural_steps.surrogate import GradientSurrogate

__all__ = [
    "HOLDOUT_BLOCK",
    "HOLDOUT_EVERY",
    "MIN_PAIRS",
    "GradientFit",
    "fit_gradient_surrogate",
    "heldout_slots",
]


# ---------------------------------------------------------------------------------------
# §1 Gradient regression (NNgHMC)
# ---------------------------------------------------------------------------------------

# Held-out pairs: every HOLDOUT_EVERY-th run of HOLDOUT_BLOCK consecutive buffer slots
# (10 %). Consecutive slots are consecutive leapfrog steps of one trajectory, and a single
# held-out step between two training neighbours would measure interpolation along a
# trajectory rather than generalisation; runs of 16 steps keep most held-out points away
# from the training points of their own trajectory.
HOLDOUT_BLOCK = 16
HOLDOUT_EVERY = 10
# Fewer training pairs than this: no fit (the surrogate is returned unchanged).
MIN_PAIRS = 32


class GradientFit(NamedTuple):
    """What a fit reports (NaN when there was nothing to fit or nothing held out)."""

    loss: jax.Array  # training MSE on the standardised scale, mean over the last 10 % of steps
    relative_error: jax.Array  # held out: sqrt(Σ‖ĝ − g‖² / Σ‖g‖²), g = ∇ℓ in model units
    num_train: jax.Array
    num_heldout: jax.Array


def heldout_slots(capacity: int) -> np.ndarray:
    """Which slots of a buffer of ``capacity`` hold validation pairs (a static mask)."""
    return (np.arange(capacity) // HOLDOUT_BLOCK) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def _scale(sd: jax.Array, mean: jax.Array) -> jax.Array:
    # A coordinate that does not vary in the data (e.g. a gradient that is identically
    # zero) is left unscaled instead of divided by a rounding error.
    return jnp.where(sd > 1e-12 * jnp.maximum(1.0, jnp.abs(mean)), sd, 1.0)


def _masked_moments(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    weights = mask / jnp.maximum(mask.sum(), 1)
    mean = weights @ values
    sd = jnp.sqrt(weights @ (values - mean) ** 2)
    return mean, _scale(sd, mean)


def heldout_relative_error(surrogate, xs, gs, holdout_mask, slots: int) -> jax.Array:
    """‖ĝ − g‖ / ‖g‖ over the held-out pairs (``holdout_mask``; at most ``slots``, static),
    NaN when there are none."""
    holdout_index, = jnp.nonzero(holdout_mask, size=max(slots, 1), fill_value=0)
    in_use = jnp.arange(max(slots, 1)) < holdout_mask.sum()
    predicted = jax.vmap(surrogate)(xs[holdout_index])
    truth = gs[holdout_index]
    squared_error = jnp.sum(jnp.where(in_use[:, None], (predicted - truth) ** 2, 0.0))
    squared_norm = jnp.sum(jnp.where(in_use[:, None], truth**2, 0.0))
    return jnp.where(
        squared_norm > 0, jnp.sqrt(squared_error / jnp.where(squared_norm > 0, squared_norm, 1.0)), jnp.nan
    ).astype(jnp.float64)


def fit_gradient_surrogate(
    key: jax.Array,
    surrogate: GradientSurrogate,
    xs: jax.Array,
    gs: jax.Array,
    count: jax.Array,
    *,
    steps: int = 1500,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
) -> tuple[GradientSurrogate, GradientFit]:
    """Fit ``surrogate`` to the pairs (xs, gs) by gradient regression.

    Parameters
    ----------
    key
        Randomness for the minibatches.
    surrogate
        The starting point (warm start: the previous fit, or a fresh network).
    xs, gs
        Ring buffers of positions and of the learned part's gradients, shape
        ``(capacity, d)`` or ``(chains, capacity, d)`` (then all chains' pairs are pooled).
    count
        Pairs written into each buffer (scalar, or one per chain); the first
        ``min(count, capacity)`` slots of a buffer are valid.
    steps, batch_size, learning_rate
        Adam steps (static), minibatch size (static), peak learning rate (reached linearly
        over the first 10 % of the steps from 5 % of it, then cosine decay to 5 %).

    Returns
    -------
    The fitted surrogate, with the standardisation of this data set, and a ``GradientFit``.
    Fewer than ``MIN_PAIRS`` training pairs: the surrogate unchanged and NaN losses.
    """
    capacity, dim = xs.shape[-2:]
    xs = jnp.asarray(xs).reshape(-1, capacity, dim)
    gs = jnp.asarray(gs).reshape(-1, capacity, dim)
    count = jnp.reshape(jnp.asarray(count), (-1,))
    chains = xs.shape[0]

    valid = jnp.arange(capacity)[None, :] < jnp.minimum(count, capacity)[:, None]
    held = jnp.asarray(heldout_slots(capacity))[None, :]
    train_mask = (valid & ~held).reshape(-1)
    holdout_mask = (valid & held).reshape(-1)
    x_all, g_all = xs.reshape(-1, dim), gs.reshape(-1, dim)
    num_train, num_heldout = train_mask.sum(), holdout_mask.sum()

    arrays, structure = eqx.partition(surrogate, eqx.is_array)

    def fit(arrays):
        surrogate = eqx.combine(arrays, structure)
        x_mean, x_scale = _masked_moments(x_all, train_mask)
        g_mean, g_scale = _masked_moments(g_all, train_mask)
        surrogate = eqx.tree_at(
            lambda s: (s.x_mean, s.x_scale, s.g_mean, s.g_scale),
            surrogate,
            (x_mean, x_scale, g_mean, g_scale),
        )
        params, static = eqx.partition(surrogate.net, eqx.is_array)
        # A short linear warm-up to the peak keeps a warm start's fit: the first Adam steps
        # at the full rate would throw much of it away.
        schedule = optax.warmup_cosine_decay_schedule(
            0.05 * learning_rate, learning_rate, max(1, steps // 10), steps, 0.05 * learning_rate
        )
        optimiser = optax.adam(schedule)
        # Static size: the indices of the training pairs first, padding after.
        train_index = jnp.nonzero(train_mask, size=train_mask.size, fill_value=0)[0]

        def loss_fn(params, z, target):
            net = eqx.combine(params, static)
            return jnp.mean((jax.vmap(net)(z) - target) ** 2)

        def one_step(carry, key):
            params, opt_state = carry
            rows = train_index[jax.random.randint(key, (batch_size,), 0, num_train)]
            z = (x_all[rows] - x_mean) / x_scale
            target = (g_all[rows] - g_mean) / g_scale
            loss, grads = jax.value_and_grad(loss_fn)(params, z, target)
            updates, opt_state = optimiser.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, steps)
        (params, _), losses = jax.lax.scan(one_step, (params, optimiser.init(params)), keys)
        surrogate = eqx.tree_at(lambda s: s.net, surrogate, eqx.combine(params, static))
        loss = jnp.mean(losses[-max(1, steps // 10) :]).astype(jnp.float64)
        return eqx.filter(surrogate, eqx.is_array), loss

    def skip(arrays):
        return arrays, jnp.full((), jnp.nan, jnp.float64)

    # lax.cond on the arrays only: the network's activation functions are not JAX values.
    arrays, loss = jax.lax.cond(num_train >= MIN_PAIRS, fit, skip, arrays)
    surrogate = eqx.combine(arrays, structure)

    relative_error = heldout_relative_error(
        surrogate, x_all, g_all, holdout_mask, int(heldout_slots(capacity).sum()) * chains
    )
    relative_error = jnp.where(jnp.isfinite(loss), relative_error, jnp.nan)
    return surrogate, GradientFit(loss, relative_error, num_train, num_heldout)


# ---------------------------------------------------------------------------------------
# §2 Kernel training on an ensemble of chains (L2HMC, proposal-entropy sampler)
# ---------------------------------------------------------------------------------------
# Reserved for the ensemble training loop: loss functions of (kernel parameters, batch of
# chain states) from ``kernels/l2hmc.py`` and ``kernels/entropy.py``, optimised with the
# same optax conventions as §1 (a schedule as data, ``optax.chain``, a ``lax.scan`` over
# steps, jit-able with static step counts).
