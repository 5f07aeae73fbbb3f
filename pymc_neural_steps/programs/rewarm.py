"""A short true-gradient warm-up for a chain handed back to HMC when warm-up is over.

A learned kernel that a check turns down late (NNgHMC's surrogate vetoed by the mixing
gate at the end of warm-up) leaves its chain with settings adapted to the learned kernel:
a mass matrix estimated from the learned chain's positions (too narrow if it did not
travel) and a step size that never saw the true gradient under that mass matrix. Drawing
with them gave R-hat 1.5 on posteriordb's hmm_drive_0, where the same HMC, warmed up
normally, passes. ``rewarm`` runs Stan's schedule for a short warm-up (``REWARM``
iterations: step size, one mass-matrix window, step size) with the true gradient from the
chain's position before the draws, its gradients counted.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pymc_neural_steps import adaptation

__all__ = ["ENOUGH", "REWARM", "rewarm"]

# Iterations of the re-warm-up: Stan's short schedule (15 % step size, a 75-iteration
# window, 10 % step size).
REWARM = 100
# A chain handed back that ran this many true-gradient warm-up iterations afterwards
# (a window of the driver's and its terminal buffer, at least) owes none.
ENOUGH = 150


def rewarm(tune: Callable, key, carry, codes=None):
    """Run ``tune(key, carry, code) -> (carry, position, stats)`` (one chain, the true
    gradient, adapting) once per code of ``codes`` (default Stan's schedule of
    ``REWARM`` iterations).

    Returns (carry, the stats summed over the iterations): counts such as
    ``n_grad_evals`` (``stats[3]``, ``programs.base.COMMON_STATS``) are then totals."""
    codes = jnp.asarray(adaptation.window_codes(REWARM) if codes is None else codes)

    def body(c, xs):
        k, code = xs
        c, _, stats = tune(k, c, code)
        return c, stats

    keys = jax.random.split(key, codes.shape[0])
    carry, stats = jax.lax.scan(body, carry, (keys, codes))
    return carry, jnp.sum(stats, axis=0)
