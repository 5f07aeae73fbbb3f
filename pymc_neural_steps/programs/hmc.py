"""HMC's program: true-gradient HMC with Stan-style warm-up, as a ``ChainProgram``.

The baseline every learned method is measured against, and the warm-up engine the learned
programs build on. Step size by dual averaging, diagonal mass matrix from windowed variance
estimates (``adaptation.py``), and a jittered trajectory length: each draw integrates for
a time drawn uniformly from (0, 2λ], λ = ``path_length`` in the units the adapted mass
matrix whitens to (π/2 takes a unit Gaussian from x to an independent x').
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation
from pymc_neural_steps.kernels import hmc
from pymc_neural_steps.programs.base import (
    COMMON_STATS,
    DEFAULT_MODE,
    ChainProgram,
    StatSpec,
    pack_stats,
)
from pymc_neural_steps.target import Target

__all__ = [
    "HMC_STATS",
    "HMCCarry",
    "freeze",
    "hmc_program",
    "initial_step_size",
    "jittered_num_steps",
]


class HMCCarry(NamedTuple):
    state: hmc.HMCState
    warmup: adaptation.WarmupState
    step_size: jax.Array  # the frozen step size once warm-up has ended
    inverse_mass: jax.Array
    refresh_evals: jax.Array  # gradients spent re-reading a position set from outside


HMC_STATS = (
    StatSpec("energy", np.float64),
    StatSpec("energy_error", np.float64),
    StatSpec("step_size", np.float64),
    StatSpec("n_steps", np.int64),
)


def initial_step_size(dim: int) -> float:
    # PyMC's default, 0.25 / d^¼; dual averaging moves it within tens of iterations.
    return 0.25 / dim**0.25


def jittered_num_steps(key, step_size, path_length, max_steps):
    length = jax.random.uniform(key, minval=0.0, maxval=2.0 * path_length)
    steps = jnp.ceil(length / step_size)
    return jnp.clip(jnp.nan_to_num(steps, nan=1.0), 1, max_steps).astype(jnp.int64)


def freeze(carry: HMCCarry) -> HMCCarry:
    """The carry with warm-up's final step size and mass matrix as the ones to draw with."""
    step_size, inverse_mass = adaptation.warmup_final(carry.warmup)
    return carry._replace(step_size=step_size, inverse_mass=inverse_mass)


def hmc_program(
    target: Target,
    *,
    target_accept: float = 0.8,
    path_length: float = np.pi / 2,
    max_steps: int = 1024,
    adapt_mass: bool = True,
    step_size: float | None = None,
) -> ChainProgram:
    """The ``ChainProgram`` of HMC with warm-up adaptation on ``target``."""
    dim = target.dim
    step_size0 = initial_step_size(dim) if step_size is None else step_size

    def logdensity_fn(extras):
        return lambda x: target.logdensity(x, *extras)

    def init(position, extras):
        state = hmc.init(position, logdensity_fn(extras))
        warmup = adaptation.warmup_init(dim, step_size0, target_accept)
        zero = jnp.zeros((), int)
        return HMCCarry(state, warmup, jnp.asarray(step_size0), warmup.inverse_mass, zero)

    def refresh(carry, position, extras):
        # Another step method may have moved the position, or changed the other variables
        # (extras): then the cached density and gradient are stale and cost one gradient.
        if extras:
            return carry._replace(
                state=hmc.init(position, logdensity_fn(extras)), refresh_evals=jnp.ones((), int)
            )
        same = jnp.all(position == carry.state.position)
        state = jax.lax.cond(
            same, lambda: carry.state, lambda: hmc.init(position, logdensity_fn(extras))
        )
        return carry._replace(state=state, refresh_evals=jnp.where(same, 0, 1))

    def transition(key, carry, step_size, inverse_mass, extras):
        key_steps, key_kernel = jax.random.split(key)
        num_steps = jittered_num_steps(key_steps, step_size, path_length, max_steps)
        kernel = hmc.build_kernel(logdensity_fn(extras))
        params = hmc.HMCParams(step_size, inverse_mass, num_steps)
        state, info = kernel(key_kernel, carry.state, params)
        stats = pack_stats(
            info.acceptance_rate,
            info.is_divergent,
            state.logdensity,
            info.n_grad_evals + carry.refresh_evals,
            info.energy,
            info.energy_error,
            step_size,
            info.num_steps,
        )
        return state, info, stats

    def tune(key, carry, code, extras, mode=DEFAULT_MODE):
        step_size = adaptation.current_step_size(carry.warmup)
        inverse_mass = carry.warmup.inverse_mass
        state, info, stats = transition(key, carry, step_size, inverse_mass, extras)
        code = code if adapt_mass else jnp.minimum(code, adaptation.FAST)
        warmup = adaptation.warmup_update(carry.warmup, code, state.position, info.acceptance_rate)
        carry = carry._replace(state=state, warmup=warmup, refresh_evals=jnp.zeros((), int))
        return carry, state.position, stats

    def draw(key, carry, extras, mode=DEFAULT_MODE):
        state, _, stats = transition(key, carry, carry.step_size, carry.inverse_mass, extras)
        carry = carry._replace(state=state, refresh_evals=jnp.zeros((), int))
        return carry, state.position, stats

    return ChainProgram(
        init=init,
        tune=tune,
        end_tune=freeze,
        draw=draw,
        refresh=refresh,
        stat_specs=COMMON_STATS + HMC_STATS,
    )
