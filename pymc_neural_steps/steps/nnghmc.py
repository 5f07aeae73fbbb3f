"""``NNgHMC``: HMC whose leapfrog runs on a learned gradient, exact by the MH test.

Li, Holbrook, Shahbaba & Baldi, "Neural network gradient Hamiltonian Monte Carlo" (2019);
``algorithms.md`` §1. One chain's life:

1. **Warm-up on the true gradient** -- ``JaxHMC``'s adaptation (dual-averaging step size,
   Stan's mass-matrix windows). Every leapfrog step of every trajectory, rejected ones
   included, writes the pair (x, ∇ℓ(x)) into a ring buffer in the chain's carry, ℓ = log
   likelihood + log potentials (``kernels/nnghmc.py``). Collection starts with the first
   slow window (iteration 75), once the chain has reached its typical set.
2. **Trajectory length** -- after each mass-matrix change (and from the start), the first
   32 warm-up trajectories (``UTURN_SAMPLES``) are continued past their proposal until
   their first U-turn, (x_t − x_0)·M⁻¹p_t < 0 (the continuation is neither recorded nor
   used for the MH test); λ, the mean integration time, is half the mean of those U-turn
   times, and each transition integrates for a time drawn uniformly from (0, 2λ]. Later
   trajectories stop at their proposal: before the surrogate passes, continuing them costs
   true gradients (on ``testing.gp_regression()``, 2 chains, 500 warm-up iterations:
   2,178 warm-up gradients instead of 2,866, bulk ESS 506 instead of 456). For a Gaussian
   in the adapted metric the first U-turn is at π, so λ = π/2, ``JaxHMC``'s default.
   Measuring the U-turn by continuing the trajectory (rather than only from those long
   enough to reach it) keeps the estimate free of the censoring that would otherwise
   shrink λ step by step.
3. **Training on a schedule** (paper §3; ``trains_after``) -- after warm-up iteration 150
   and every 100 after it, until the surrogate passes. A training that would fall within
   25 iterations after a mass-matrix change waits until 25 iterations after it (the step
   size must first re-adapt to the new metric, or the assessment would compare two badly
   tuned samplers), and none falls in the last 50 iterations of a warm-up of known length.
   With Stan's windows and 1000 warm-up iterations: after 175, 275, 350, 475, 550, 650, 750
   and 850. Each training fits the network (``training.fit_gradient_surrogate``, warm
   start) and *assesses* it: from M = 32 buffered (held-out) positions with fresh momenta,
   each trajectory is run once on the true gradient and once on the surrogate (same ε,
   M⁻¹, L and momentum) and the mean MH acceptance probabilities under the true Hamiltonian
   are compared. The surrogate passes when its mean is at least the true one minus
   ``tolerance`` (0.1). The assessment's true gradients are added to the next iteration's
   ``n_grad_evals``.
4. **After the pass** -- the rest of warm-up and every draw integrate the field
   ∇log prior + ĝ_ℓ: L network evaluations and one log density per draw, no true gradient.
   Step size, mass matrix and path length keep adapting during warm-up, on the surrogate.
   A surrogate's gradient error is a bias that does not vanish as ε -> 0, so its acceptance
   levels off below the true gradient's; dual averaging then aims for the target less the
   shortfall the assessment measured (at least 0.6) and keeps ε above half its value at
   the switch, instead of driving ε, and the cost L = λ/ε, towards zero for nothing.
   A surrogate that never passes leaves the chain on true-gradient HMC, with a warning.

Under ``pymc_neural_steps.sample`` one network is trained on the pooled buffers of all
chains and shared (``pooled_train``); under ``pm.sample`` each chain trains its own.

The first training comes at 150 because the first 75 iterations are spent reaching the
typical set and nothing is recorded then; by 150 the buffer holds 75 iterations of
trajectories, typically more than a thousand pairs per chain. The true-gradient iterations
before the surrogate passes are the expensive part of NNgHMC's cost: on
``testing.gp_regression()`` (2 chains x 1,000 draws after 500) training first at 150
instead of 250 cut the whole run from 82 s to 63 s at the same ESS. A surrogate that fails
there costs one assessment (32 trajectories) and is retrained 100 iterations later on a
fuller buffer.
A warm-up too short for the schedule trains once, at ~80 % of it (``trains_after``).
PyMC 5 does not tell a step method how long warm-up is; the schedule then runs open-ended,
and the last training can fall closer to the end of warm-up (e.g. after 475 of 500
iterations), leaving the step size fewer iterations to adapt to the surrogate. If it falls
on the very last iteration, its assessment gradients are reported on the first draw.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm

from pymc_neural_steps import adaptation
from pymc_neural_steps.kernels import hmc
from pymc_neural_steps.kernels import nnghmc as kernel_lib
from pymc_neural_steps.steps.base import (
    DEFAULT_MODE,
    TRAINING_TIME_STAT,
    ChainProgram,
    NeuralStep,
    StatSpec,
    pack_stats,
)
from pymc_neural_steps.steps.hmc import HMC_STATS, initial_step_size, jittered_num_steps
from pymc_neural_steps.surrogate import (
    BLOCK_THRESHOLD,
    DEFAULT_WIDTH,
    GradientSurrogate,
    SurrogateSpec,
    default_spec,
    make_surrogate,
)
from pymc_neural_steps.target import Layout, LayoutMismatchError, Target, build_layout
from pymc_neural_steps.trained import json_float
from pymc_neural_steps.training import fit_gradient_surrogate, heldout_slots
from pymc_neural_steps.validation import (
    check_count,
    check_fraction,
    check_inverse_mass,
    check_nonnegative,
    check_positive,
    check_step_size,
)

__all__ = ["NNgHMC", "TrainedNNgHMC", "nnghmc_program", "trains_after"]

SURROGATE_MODE = "surrogate"

NNGHMC_STATS = (
    StatSpec("n_surrogate_evals", np.int64),
    StatSpec("n_logp_evals", np.int64),  # log densities without gradient
    StatSpec("surrogate_error", np.float64),
    StatSpec("training_loss", np.float64),
    StatSpec("training", bool),
    StatSpec("surrogate_nonfinite", bool),
    StatSpec(TRAINING_TIME_STAT, np.float64),
)

FIRST_TRAINING = 150
# A trained surrogate used on another model (a prior swap) is checked against the true
# gradient after this many warm-up iterations (the end of Stan's first fast window, by
# which a chain has reached its typical set), or at the middle of a shorter warm-up.
REGION_CHECK = 75
RETRAIN_EVERY = 100
# Iterations a training waits after a mass-matrix change (step size re-adapting).
SETTLE = 25
# Warm-up iterations kept after the last training, so that the step size can adapt to the
# surrogate's acceptance (Stan's terminal buffer has the same length).
SURROGATE_WARMUP = adaptation.TERM_BUFFER
# Once the surrogate has passed: the lowest acceptance the step size aims for, and the
# fraction of the step size at the switch below which it is not adapted.
MIN_SURROGATE_TARGET = 0.6
STEP_FLOOR = 0.5
# Buffer capacity: 8192 pairs, fewer in high dimension so that one chain's buffer stays
# below 32 MiB (two float64 arrays of capacity × d).
MAX_CAPACITY = 8192
# First U-turn times measured per mass matrix: λ is their mean, known to ~10 % after 32;
# continuing more trajectories would cost true gradients for nothing.
UTURN_SAMPLES = 32
MAX_BUFFER_BYTES = 32 * 2**20


def surrogate_target(target_accept, shortfall):
    """The acceptance the step size aims for on the surrogate: the target less the
    surrogate's measured shortfall against the true gradient, but at least 0.6."""
    shortfall = jnp.maximum(jnp.nan_to_num(shortfall), 0.0)
    low = jnp.minimum(MIN_SURROGATE_TARGET, target_accept)
    return jnp.clip(target_accept - shortfall, low, target_accept)


def _nan_if_none(value) -> float:
    return math.nan if value is None else float(value)


def default_capacity(dim: int) -> int:
    return int(max(1024, min(MAX_CAPACITY, MAX_BUFFER_BYTES // (16 * dim))))


def _collection_start(num_tune: int) -> int:
    # The first slow window of adaptation.window_codes: 75, or 15 % of a short warm-up.
    return adaptation.INIT_BUFFER if num_tune >= 150 else int(0.15 * num_tune)


@lru_cache(maxsize=64)
def _metric_changes(num_tune: int) -> frozenset[int]:
    """Iteration counts after which the mass matrix changes (known warm-up length)."""
    codes = adaptation.window_codes(num_tune)
    return frozenset(int(i) + 1 for i in np.flatnonzero(codes == adaptation.SLOW_END))


def _metric_changed(done: int, num_tune: int | None) -> bool:
    if num_tune is None:
        return adaptation.window_code(done - 1, None) == adaptation.SLOW_END
    return done in _metric_changes(num_tune)


def _settled(done: int, num_tune: int | None) -> int:
    """``done``, or later if the mass matrix changed within the last ``SETTLE`` iterations.

    Right after a change the step size is still the old metric's, and an assessment then
    would compare two acceptance rates of a badly tuned sampler (both low: a surrogate
    would pass on little evidence)."""
    for back in range(SETTLE):
        if done - back >= 1 and _metric_changed(done - back, num_tune):
            return done - back + SETTLE
    return done


def region_check_after(num_tune: int | None) -> int:
    """Warm-up iterations after which a trained start's surrogate is checked."""
    if num_tune is None:
        return REGION_CHECK
    return max(1, min(REGION_CHECK, num_tune // 2))


@lru_cache(maxsize=64)
def _training_points(num_tune: int, first: int, every: int) -> frozenset[int]:
    last = num_tune - SURROGATE_WARMUP
    points = {_settled(n, num_tune) for n in range(first, last + 1, every)}
    points = {n for n in points if n <= last}
    if not points:  # a short warm-up: train once, leaving ~20 % of it for the surrogate
        single = num_tune - max(10, num_tune // 5)
        if single - _collection_start(num_tune) >= 25:
            settled = _settled(single, num_tune)
            points = {settled if settled <= num_tune - 10 else single}
    return frozenset(points)


def trains_after(
    iteration: int,
    num_tune: int | None,
    first: int = FIRST_TRAINING,
    every: int = RETRAIN_EVERY,
) -> bool:
    """Whether NNgHMC trains after warm-up iteration ``iteration`` (0-based).

    After ``first``, ``first + every``, ... iterations, each moved ``SETTLE`` iterations
    past a mass-matrix change that happened just before it; with a known warm-up length
    only up to ``num_tune - 50``. A known warm-up too short for any of those trains once,
    at ~80 % of it, provided 25 iterations of trajectories have been recorded by then.
    """
    done = iteration + 1
    if num_tune is not None:
        return done in _training_points(int(num_tune), first, every)
    if done < first:
        return False
    candidate = first + ((done - first) // every) * every
    # A shift is shorter than ``every``: only this candidate or the previous can land here.
    return any(
        c >= first and _settled(c, None) == done for c in (candidate, candidate - every)
    )


class UTurnEstimate(NamedTuple):
    total: jax.Array  # sum of first-U-turn times since the mass matrix last changed
    count: jax.Array


class SurrogateReport(NamedTuple):
    trainings: jax.Array  # fits run so far
    loss: jax.Array  # of the last fit (standardised MSE)
    relative_error: jax.Array  # of the last fit, on held-out pairs
    accept_true: jax.Array  # mean acceptance in the last assessment, true gradient
    accept_surrogate: jax.Array  # ... and surrogate


class NNgHMCCarry(NamedTuple):
    state: hmc.HMCState  # ``gradient`` is always the field the next transition uses
    warmup: adaptation.WarmupState
    step_size: jax.Array  # frozen at the end of warm-up
    inverse_mass: jax.Array
    path_length: jax.Array  # λ; integration times are uniform on (0, 2λ]
    step_floor: jax.Array  # lower bound on the step size once the surrogate has passed
    uturn: UTurnEstimate
    buffer: kernel_lib.GradientBuffer
    collecting: jax.Array
    surrogate: Any  # the GradientSurrogate's arrays (its structure lives in the program)
    passed: jax.Array
    report: SurrogateReport
    just_trained: jax.Array
    pending_grad_evals: jax.Array  # the last assessment's true gradients, not yet reported
    refresh_evals: jax.Array
    refresh_logp_evals: jax.Array
    extras: tuple  # the other step methods' variables (compound steps), for training
    region_checked: jax.Array  # a trained start's surrogate was checked on this posterior


@dataclass(frozen=True)
class TrainedNNgHMC:
    """What a warm-up learned, detached from any model: enough to sample another model
    with the same parameter layout (``NNgHMC.from_trained``) or to save (``io.py``).

    ``surrogate_leaves`` are the network's and standardisation's arrays in the order of
    ``jax.tree.leaves`` of a surrogate built from ``spec``; ``surrogate`` rebuilds it.
    """

    spec: SurrogateSpec
    surrogate_leaves: tuple[np.ndarray, ...]
    step_size: float
    inverse_mass: np.ndarray
    path_length: float
    layout: dict
    passed: bool = True
    report: dict = field(default_factory=dict)

    @staticmethod
    def structure(spec: SurrogateSpec):
        """(arrays template, non-array part) of a surrogate with this spec."""
        return eqx.partition(make_surrogate(spec, jax.random.key(0)), eqx.is_array)

    @property
    def surrogate(self) -> GradientSurrogate:
        arrays, static = self.structure(self.spec)
        leaves = [jnp.asarray(a) for a in self.surrogate_leaves]
        arrays = jax.tree.unflatten(jax.tree.structure(arrays), leaves)
        return eqx.combine(arrays, static)

    @classmethod
    def from_surrogate(
        cls,
        surrogate: GradientSurrogate,
        *,
        layout: Layout | dict,
        step_size: float,
        inverse_mass=None,
        path_length: float = math.pi / 2,
        passed: bool = True,
        report: dict | None = None,
    ) -> TrainedNNgHMC:
        """Wrap a surrogate made by hand (e.g. ``surrogate.make_surrogate``) for a model."""
        fingerprint = layout.fingerprint() if isinstance(layout, Layout) else dict(layout)
        dim = int(fingerprint["dim"])
        if surrogate.spec.dim != dim:
            raise ValueError(
                f"the surrogate is for dimension {surrogate.spec.dim}, the layout has {dim}"
            )
        arrays = eqx.filter(surrogate, eqx.is_array)
        leaves = tuple(np.asarray(a) for a in jax.tree.leaves(arrays))
        if inverse_mass is None:
            inverse_mass = np.ones(dim)
        inverse_mass = np.asarray(inverse_mass, np.float64)
        return cls(
            spec=surrogate.spec,
            surrogate_leaves=leaves,
            step_size=float(step_size),
            inverse_mass=inverse_mass,
            path_length=float(path_length),
            layout=fingerprint,
            passed=passed,
            report=dict(report or {}),
        )


def nnghmc_program(
    target: Target,
    *,
    spec: SurrogateSpec,
    target_accept: float = 0.8,
    max_steps: int = 1024,
    step_size: float | None = None,
    path_length: float | None = None,
    buffer_size: int | None = None,
    train_steps: int = 1500,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
    assess_trajectories: int = 32,
    tolerance: float = 0.1,
    first_training: int = FIRST_TRAINING,
    retrain_every: int = RETRAIN_EVERY,
    adapt_mass: bool = True,
    trained: TrainedNNgHMC | None = None,
    check_region: bool = True,
) -> ChainProgram:
    """The ``ChainProgram`` of NNgHMC on ``target`` (fresh, or starting from ``trained``;
    ``check_region=False`` skips the check of ``trained`` on this posterior)."""
    dim = target.dim
    terms = target.density_terms
    user_target_accept = target_accept
    checks_region = trained is not None and check_region
    if trained is None:
        arrays0, structure = TrainedNNgHMC.structure(spec)
        step_size0 = initial_step_size(dim) if step_size is None else step_size
        inverse_mass0 = np.ones(dim)
        path_length0 = math.pi / 2 if path_length is None else path_length
        capacity = default_capacity(dim) if buffer_size is None else int(buffer_size)
        report0 = SurrogateReport(0, math.nan, math.nan, math.nan, math.nan)
    else:
        arrays0, structure = eqx.partition(trained.surrogate, eqx.is_array)
        step_size0, inverse_mass0 = trained.step_size, trained.inverse_mass
        path_length0 = trained.path_length if path_length is None else path_length
        capacity = 1  # nothing is ever recorded
        report0 = SurrogateReport(
            0,
            _nan_if_none(trained.report.get("loss")),
            _nan_if_none(trained.report.get("relative_error")),
            math.nan,
            math.nan,
        )
        # Aim for the acceptance the surrogate reached when it was assessed (see
        # ``surrogate_target``), and never adapt ε below half the trained one once the mass
        # matrix has been re-estimated for this model (the first window's end).
        shortfall = _nan_if_none(trained.report.get("accept_true")) - _nan_if_none(
            trained.report.get("accept_surrogate")
        )
        shortfall = 0.0 if math.isnan(shortfall) else shortfall
        target_accept = float(surrogate_target(target_accept, shortfall))
    adapt_path = path_length is None
    holdout = jnp.asarray(heldout_slots(capacity))

    # --- fields ------------------------------------------------------------------------
    def logdensity_fn(extras):
        def logdensity(x):
            prior, lik, pot = terms(x, *extras)
            total = prior + lik + pot  # the order of Target.logdensity
            return jnp.where(jnp.isnan(total), -jnp.inf, total)

        return logdensity

    def prior_gradient(extras):
        return jax.grad(lambda x: terms(x, *extras)[0])

    def true_field(extras):
        """x -> (log p, ∇log p, ∇ℓ): one pass through the model, the prior's part apart."""

        def learned_part(x):
            prior, lik, pot = terms(x, *extras)
            return lik + pot, (prior, lik, pot)

        value_and_grad = jax.value_and_grad(learned_part, has_aux=True)
        grad_prior = prior_gradient(extras)

        def field(x):
            (_, (prior, lik, pot)), grad_learned = value_and_grad(x)
            total = prior + lik + pot
            total = jnp.where(jnp.isnan(total), -jnp.inf, total)
            return total, grad_prior(x) + grad_learned, grad_learned

        return field

    def surrogate_gradient(arrays, extras):
        surrogate = eqx.combine(arrays, structure)
        grad_prior = prior_gradient(extras)
        return lambda x: grad_prior(x) + surrogate(x)

    def surrogate_field(arrays, extras):
        gradient = surrogate_gradient(arrays, extras)
        return lambda x: (jnp.zeros((), x.dtype), gradient(x), None)

    def state_at(arrays, passed, position, extras):
        def on_true_gradient():
            value, gradient, _ = true_field(extras)(position)
            return hmc.HMCState(position, value, gradient)

        def on_surrogate():
            gradient = surrogate_gradient(arrays, extras)(position)
            return hmc.HMCState(position, logdensity_fn(extras)(position), gradient)

        return jax.lax.cond(passed, on_surrogate, on_true_gradient)

    # --- chain program -----------------------------------------------------------------
    def init(position, extras):
        extras = tuple(jnp.asarray(e) for e in extras)
        passed = jnp.asarray(trained is not None)
        state = state_at(arrays0, passed, jnp.asarray(position), extras)
        warmup = adaptation.warmup_init(dim, step_size0, target_accept, jnp.asarray(inverse_mass0))
        zero_int = jnp.zeros((), jnp.int64)
        return NNgHMCCarry(
            state=state,
            warmup=warmup,
            step_size=jnp.asarray(step_size0, jnp.float64),
            inverse_mass=warmup.inverse_mass,
            path_length=jnp.asarray(path_length0, jnp.float64),
            step_floor=jnp.zeros((), jnp.float64),
            uturn=UTurnEstimate(jnp.zeros(()), jnp.zeros(())),
            buffer=kernel_lib.buffer_init(capacity, dim),
            collecting=jnp.zeros((), bool),
            surrogate=jax.tree.map(jnp.asarray, arrays0),
            passed=passed,
            report=SurrogateReport(*(jnp.asarray(v, jnp.float64) for v in report0)),
            just_trained=jnp.zeros((), bool),
            pending_grad_evals=zero_int,
            refresh_evals=zero_int,
            refresh_logp_evals=zero_int,
            extras=extras,
            region_checked=jnp.asarray(not checks_region),
        )

    def refresh(carry, position, extras):
        # Another step method may have moved the position or changed the other variables;
        # the cached density and field value are then stale.
        extras = tuple(jnp.asarray(e) for e in extras)

        def fresh():
            return state_at(carry.surrogate, carry.passed, position, extras)

        if extras:
            state, same = fresh(), jnp.zeros((), bool)
        else:
            same = jnp.all(position == carry.state.position)
            state = jax.lax.cond(same, lambda: carry.state, fresh)
        spent = jnp.where(same | carry.passed, 0, 1)  # on the surrogate: a log density only
        logp_spent = jnp.where(same | ~carry.passed, 0, 1)
        return carry._replace(
            state=state, refresh_evals=spent, refresh_logp_evals=logp_spent, extras=extras
        )

    def kernel_for(mode, carry, extras, *, warm):
        """The transition of this mode; in warm-up it finds U-turns and may record."""
        if mode == SURROGATE_MODE:
            field = surrogate_field(carry.surrogate, extras)
            return kernel_lib.build_kernel(
                logdensity_fn(extras), field, exact=False, find_uturn=warm and adapt_path,
                max_steps=max_steps,
            )
        record = None
        if warm and trained is None:
            collecting = carry.collecting

            def record(buffer, x, learned_gradient, ok):
                return kernel_lib.buffer_push(buffer, x, learned_gradient, ok & collecting)

        return kernel_lib.build_kernel(
            logdensity_fn(extras), true_field(extras), exact=True,
            find_uturn=warm and adapt_path, max_steps=max_steps, record=record,
        )

    def stats(info, state, step_size, carry, mode):
        return pack_stats(
            info.acceptance_rate,
            info.is_divergent,
            state.logdensity,
            info.n_grad_evals + carry.refresh_evals + carry.pending_grad_evals,
            info.energy,
            info.energy_error,
            step_size,
            info.num_steps,
            info.n_field_evals,
            info.n_logp_evals + carry.refresh_logp_evals,
            carry.report.relative_error,
            carry.report.loss,
            carry.just_trained,
            info.is_nonfinite & (mode == SURROGATE_MODE),
            0.0,  # training_time: filled on the host
        )

    def reported(carry):
        zero = jnp.zeros((), jnp.int64)
        return carry._replace(
            refresh_evals=zero,
            refresh_logp_evals=zero,
            pending_grad_evals=zero,
            just_trained=jnp.zeros((), bool),
        )

    def tune(key, carry, code, extras, mode=DEFAULT_MODE):
        step_size = jnp.maximum(adaptation.current_step_size(carry.warmup), carry.step_floor)
        inverse_mass = carry.warmup.inverse_mass
        key_steps, key_kernel = jax.random.split(key)
        num_steps = jittered_num_steps(key_steps, step_size, carry.path_length, max_steps)
        carry = carry._replace(collecting=carry.collecting | (code >= adaptation.SLOW))
        kernel = kernel_for(mode, carry, carry.extras, warm=True)
        params = hmc.HMCParams(step_size, inverse_mass, num_steps)
        continuing = carry.uturn.count < UTURN_SAMPLES
        state, info, buffer = kernel(key_kernel, carry.state, params, carry.buffer, continuing)
        packed = stats(info, state, step_size, carry, mode)

        code = code if adapt_mass else jnp.minimum(code, adaptation.FAST)
        warmup = adaptation.warmup_update(carry.warmup, code, state.position, info.acceptance_rate)
        step_floor = carry.step_floor
        if trained is not None and adapt_mass:
            step_floor = jnp.where(
                code == adaptation.SLOW_END,
                jnp.maximum(step_floor, STEP_FLOOR * trained.step_size),
                step_floor,
            )
        uturn, path_length = carry.uturn, carry.path_length
        if adapt_path:
            seen = info.uturn_steps > 0
            total = uturn.total + jnp.where(seen, info.uturn_steps * step_size, 0.0)
            count = uturn.count + seen
            path_length = jnp.where(count > 0, 0.5 * total / jnp.maximum(count, 1), path_length)
            # The mass matrix changes after this iteration: U-turn times in the old metric
            # no longer apply (λ keeps its last value until new ones arrive).
            reset = code == adaptation.SLOW_END
            uturn = UTurnEstimate(jnp.where(reset, 0.0, total), jnp.where(reset, 0.0, count))
        carry = reported(carry)._replace(
            state=state,
            warmup=warmup,
            buffer=buffer,
            uturn=uturn,
            path_length=path_length,
            step_floor=step_floor,
        )
        return carry, state.position, packed

    def end_tune(carry):
        step_size, inverse_mass = adaptation.warmup_final(carry.warmup)
        step_size = jnp.maximum(step_size, carry.step_floor)
        return carry._replace(step_size=step_size, inverse_mass=inverse_mass)

    def draw(key, carry, extras, mode=DEFAULT_MODE):
        key_steps, key_kernel = jax.random.split(key)
        num_steps = jittered_num_steps(key_steps, carry.step_size, carry.path_length, max_steps)
        kernel = kernel_for(mode, carry, carry.extras, warm=False)
        params = hmc.HMCParams(carry.step_size, carry.inverse_mass, num_steps)
        state, info, _ = kernel(key_kernel, carry.state, params)
        packed = stats(info, state, carry.step_size, carry, mode)
        return reported(carry)._replace(state=state), state.position, packed

    # --- training ----------------------------------------------------------------------
    def start_slots(key, buffer, n):
        """n buffer slots to start assessment trajectories from: held-out pairs if any."""
        valid = jnp.arange(capacity) < jnp.minimum(buffer.count, capacity)
        held = valid & holdout
        use = jnp.where(jnp.any(held), held, valid)
        weights = jnp.where(jnp.any(use), use / jnp.maximum(use.sum(), 1), 1.0 / capacity)
        return jax.random.choice(key, capacity, (n,), p=weights)

    def buffered_starts(key, carry, per_chain):
        """``per_chain`` buffered positions of every chain, held-out ones if any."""
        chains = carry.passed.shape[0]
        slots = jax.vmap(start_slots, (0, 0, None))(
            jax.random.split(key, chains), carry.buffer, per_chain
        )
        return jax.vmap(lambda xs, i: xs[i])(carry.buffer.positions, slots)

    def assess(key, arrays, carry, positions):
        """Paired trajectories (true vs surrogate) from ``positions`` (chains, per chain,
        d), at each chain's current step size, metric and path length.

        Returns the mean acceptances and the true gradients each chain spent."""
        chains, per_chain = positions.shape[:2]
        key_steps, key_pairs = jax.random.split(key)
        # Dual averaging's averaged step size: its iterate oscillates around it.
        step_size, _ = jax.vmap(adaptation.warmup_final)(carry.warmup)

        # One flat batch of chains × per_chain pairs (a nested vmap compiles much slower).
        def per_pair(a):
            return jnp.repeat(a, per_chain, axis=0)

        pair_step_size = per_pair(step_size)
        num_steps = jax.vmap(jittered_num_steps, (0, 0, 0, None))(
            jax.random.split(key_steps, chains * per_chain),
            pair_step_size,
            per_pair(carry.path_length),
            max_steps,
        )

        def one_pair(key, position, step_size, inverse_mass, num_steps, extras):
            field = true_field(extras)
            return kernel_lib.paired_acceptance(
                key,
                position,
                hmc.HMCParams(step_size, inverse_mass, num_steps),
                lambda x: field(x)[:2],
                surrogate_gradient(arrays, extras),
                logdensity_fn(extras),
            )

        accept_true, accept_surrogate = jax.vmap(one_pair)(
            jax.random.split(key_pairs, chains * per_chain),
            positions.reshape(chains * per_chain, dim),
            pair_step_size,
            per_pair(carry.warmup.inverse_mass),
            num_steps,
            jax.tree.map(per_pair, carry.extras),
        )
        spent = jnp.sum((num_steps + 1).reshape(chains, per_chain), axis=1)
        return jnp.mean(accept_true), jnp.mean(accept_surrogate), spent

    def pooled_train(key, carry):
        """Fit one network on every chain's buffer, assess it on every chain, share it."""
        chains = carry.passed.shape[0]
        per_chain = max(1, -(-assess_trajectories // chains))

        def run(carry):
            key_fit, key_assess = jax.random.split(key)
            start = eqx.combine(jax.tree.map(lambda a: a[0], carry.surrogate), structure)
            fitted, fit = fit_gradient_surrogate(
                key_fit,
                start,
                carry.buffer.positions,
                carry.buffer.gradients,
                carry.buffer.count,
                steps=train_steps,
                batch_size=batch_size,
                learning_rate=learning_rate,
            )
            arrays = eqx.filter(fitted, eqx.is_array)
            fitted_ok = jnp.isfinite(fit.loss)

            def skip(_):
                nan = jnp.full((), jnp.nan, jnp.float64)
                return nan, nan, jnp.zeros(chains, jnp.int64)

            key_assess, key_starts = jax.random.split(key_assess)
            starts = buffered_starts(key_starts, carry, per_chain)
            accept_true, accept_surrogate, spent = jax.lax.cond(
                fitted_ok, lambda _: assess(key_assess, arrays, carry, starts), skip, None
            )
            passed = fitted_ok & (accept_surrogate >= accept_true - tolerance)
            # From here on the step size adapts to the surrogate's acceptance. A surrogate's
            # error is a bias that does not shrink with ε: its acceptance levels off below
            # that of the true gradient as ε -> 0, and dual averaging chasing the original
            # target would drive ε (and so the cost, L = λ/ε) towards 0 for nothing. So the
            # target drops by the shortfall the assessment measured, and ε stays above
            # half its value at the switch.
            target = surrogate_target(carry.warmup.target_accept, accept_true - accept_surrogate)
            warmup = carry.warmup._replace(
                target_accept=jnp.where(passed, target, carry.warmup.target_accept)
            )
            assessed_step_size, _ = jax.vmap(adaptation.warmup_final)(carry.warmup)
            step_floor = jnp.where(passed, STEP_FLOOR * assessed_step_size, carry.step_floor)
            # The carried field value must be the one the next transition integrates with.
            on_surrogate = jax.vmap(lambda x, e: surrogate_gradient(arrays, e)(x))(
                carry.state.position, carry.extras
            )
            state = carry.state._replace(
                gradient=jnp.where(passed, on_surrogate, carry.state.gradient)
            )
            report = SurrogateReport(
                carry.report.trainings + fitted_ok,
                jnp.broadcast_to(fit.loss, (chains,)),
                jnp.broadcast_to(fit.relative_error, (chains,)),
                jnp.broadcast_to(accept_true, (chains,)),
                jnp.broadcast_to(accept_surrogate, (chains,)),
            )
            return carry._replace(
                state=state,
                warmup=warmup,
                step_floor=step_floor,
                surrogate=jax.tree.map(lambda a: jnp.broadcast_to(a, (chains, *a.shape)), arrays),
                passed=jnp.broadcast_to(passed, (chains,)),
                report=report,
                just_trained=jnp.ones(chains, bool),
                pending_grad_evals=carry.pending_grad_evals + spent,
            )

        # The drivers skip training once it passed (``done_training``); this guards direct calls.
        return jax.lax.cond(jnp.all(carry.passed), lambda c: c, run, carry)

    def pooled_region_check(key, carry):
        """A trained start's surrogate against the true gradient on THIS posterior: paired
        trajectories from every chain's current position (momenta drawn afresh), the pass
        rule of training. A surrogate that fails (the posterior has left the region it was
        trained on, e.g. under a prior moved far) hands the rest of warm-up and the draws
        to the true gradient: exact and tuned, at HMC's cost."""
        chains = carry.passed.shape[0]
        per_chain = max(1, -(-assess_trajectories // chains))
        starts = jnp.repeat(carry.state.position[:, None, :], per_chain, axis=1)
        arrays = jax.tree.map(lambda a: a[0], carry.surrogate)
        accept_true, accept_surrogate, spent = assess(key, arrays, carry, starts)
        fits = accept_surrogate >= accept_true - tolerance
        fields = jax.vmap(lambda x, e: true_field(e)(x))(carry.state.position, carry.extras)
        state = carry.state._replace(
            logdensity=jnp.where(fits, carry.state.logdensity, fields[0]),
            gradient=jnp.where(fits, carry.state.gradient, fields[1]),
        )
        warmup = carry.warmup._replace(
            target_accept=jnp.where(fits, carry.warmup.target_accept, user_target_accept)
        )
        report = carry.report._replace(
            accept_true=jnp.broadcast_to(accept_true, (chains,)),
            accept_surrogate=jnp.broadcast_to(accept_surrogate, (chains,)),
        )
        return carry._replace(
            state=state,
            warmup=warmup,
            step_floor=jnp.where(fits, carry.step_floor, 0.0),
            passed=jnp.broadcast_to(fits, (chains,)),
            report=report,
            region_checked=jnp.ones(chains, bool),
            pending_grad_evals=carry.pending_grad_evals + spent,
        )

    def pooled_step(key, carry):
        if not checks_region:
            return pooled_train(key, carry)
        return jax.lax.cond(
            jnp.all(carry.region_checked), lambda c: c, lambda c: pooled_region_check(key, c), carry
        )

    def train(key, carry):
        batched = jax.tree.map(lambda a: a[None], carry)
        return jax.tree.map(lambda a: a[0], pooled_step(key, batched))

    def mode_of(carry) -> str:
        passed = np.asarray(carry.passed)
        if passed.all():
            return SURROGATE_MODE
        if not passed.any():
            return DEFAULT_MODE
        raise RuntimeError("chains disagree on whether the shared surrogate passed")

    def done_training(carry) -> bool:
        if trained is not None:
            return bool(np.asarray(carry.region_checked).all())
        return bool(np.asarray(carry.passed).all())

    train_pending = None
    if trained is None:

        def train_at(iteration, num_tune):
            return trains_after(iteration, num_tune, first_training, retrain_every)
    elif not checks_region:

        def train_at(iteration, num_tune):
            return False
    else:

        def train_pending(carry) -> bool:
            return not done_training(carry)

        def train_at(iteration, num_tune):
            return iteration + 1 == region_check_after(num_tune)

    return ChainProgram(
        init=init,
        tune=tune,
        end_tune=end_tune,
        draw=draw,
        refresh=refresh,
        stat_specs=NNgHMC.stat_specs(),
        train=train,
        pooled_train=pooled_step,
        train_at=train_at,
        mode_of=mode_of,
        done_training=done_training,
        train_pending=train_pending,
    )


class NNgHMC(NeuralStep):
    """Neural-network gradient HMC (Li et al. 2019): learn ∇log-likelihood in warm-up,
    then sample with one true log density and no true gradient per draw.

    Exact whatever the network learned: the leapfrog on any field is volume preserving and
    reversible, and every proposal passes an MH test on the model's true log density.

    Parameters
    ----------
    vars
        Value variables to sample (all continuous ones by default).
    target_accept
        Mean acceptance probability that step-size adaptation aims for.
    max_steps
        Cap on leapfrog steps per trajectory (and on a warm-up trajectory's continuation
        to its U-turn).
    step_size
        Initial step size (default 0.25 / d^¼).
    path_length
        Fix λ (integration times uniform on (0, 2λ]) instead of learning it from U-turns.
    buffer_size
        Training pairs kept per chain (default 8192, fewer above d ≈ 256: 32 MiB per chain).
    width, depth, activation, block_size, block_threshold
        The network (``surrogate.py``): ``depth`` hidden layers of ``width`` units; a block
        network with blocks of ``block_size`` outputs (default 25) when d > ``block_threshold``
        (default 50). ``block_size=0`` forces one network.
    train_steps, batch_size, learning_rate
        Adam steps per training run, minibatch size, peak learning rate (default 1e-2:
        at 1e-3, 1500 steps left the network underfitted -- held-out relative gradient
        error 0.48 on GARCH(2,1) against 0.12 at 1e-2, and 0.11 against 0.055 on a 200-d
        logistic regression's block network, measured when this default was chosen).
    assess_trajectories
        Trajectory pairs (true vs surrogate) in each assessment (shared among chains when
        ``pymc_neural_steps.sample`` trains one network for all).
    tolerance
        The surrogate passes when its mean acceptance ≥ the true gradient's − tolerance.
    first_training, retrain_every
        Training after warm-up iteration ``first_training`` and every ``retrain_every``
        after it, until the surrogate passes.
    adapt_mass
        Estimate a diagonal mass matrix during warm-up (Stan's windows).
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up, ``step.trained`` holds what was learned (``TrainedNNgHMC``), for
    ``NNgHMC.from_trained`` (a prior swap without retraining), ``step.save(path)`` and
    ``pymc_neural_steps.sensitivity.sensitivity_analysis``. Under ``pm.sample`` with
    ``cores > 1`` chains run in worker processes and ``step.trained`` stays empty in this
    one: use ``cores=1`` or ``pymc_neural_steps.sample`` to keep the trained surrogate.
    """

    name = "nnghmc"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = HMC_STATS + NNGHMC_STATS

    def __init__(
        self,
        vars=None,  # noqa: A002
        *,
        target_accept: float = 0.8,
        max_steps: int = 1024,
        step_size: float | None = None,
        path_length: float | None = None,
        buffer_size: int | None = None,
        width: int = DEFAULT_WIDTH,
        depth: int = 1,
        activation: str = "softplus",
        block_size: int | None = None,
        block_threshold: int = BLOCK_THRESHOLD,
        train_steps: int = 1500,
        batch_size: int = 256,
        learning_rate: float = 1e-2,
        assess_trajectories: int = 32,
        tolerance: float = 0.1,
        first_training: int = FIRST_TRAINING,
        retrain_every: int = RETRAIN_EVERY,
        adapt_mass: bool = True,
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        self.options = dict(
            target_accept=check_fraction("target_accept", target_accept),
            max_steps=check_count("max_steps", max_steps),
            step_size=check_step_size(step_size),
            path_length=None if path_length is None else check_positive("path_length", path_length),
            buffer_size=None if buffer_size is None else check_count("buffer_size", buffer_size),
            width=check_count("width", width),
            depth=check_count("depth", depth),
            activation=activation,
            block_size=block_size,
            block_threshold=int(block_threshold),
            train_steps=check_count("train_steps", train_steps),
            batch_size=check_count("batch_size", batch_size),
            learning_rate=check_positive("learning_rate", learning_rate),
            assess_trajectories=check_count("assess_trajectories", assess_trajectories),
            tolerance=check_nonnegative("tolerance", tolerance),
            first_training=check_count("first_training", first_training),
            retrain_every=check_count("retrain_every", retrain_every),
            adapt_mass=bool(adapt_mass),
        )
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)
        self.spec = default_spec(
            self.layout.dim,
            width=width,
            depth=depth,
            activation=activation,
            block_size=block_size,
            block_threshold=block_threshold,
        )
        self.trained: TrainedNNgHMC | None = None  # set when warm-up ends
        self._trained_start: TrainedNNgHMC | None = None  # set by from_trained / load
        self._check_region = True

    # --- program -------------------------------------------------------------------------
    def _program(self, target: Target) -> ChainProgram:
        options = {k: v for k, v in self.options.items() if k not in _NETWORK_OPTIONS}
        spec = self.spec if self._trained_start is None else self._trained_start.spec
        return nnghmc_program(
            target, spec=spec, trained=self._trained_start, check_region=self._check_region,
            **options,
        )

    def _tuned(self, carry, *, batched: bool) -> None:
        carry = jax.device_get(carry)
        passed = np.asarray(carry.passed).reshape(-1)
        report = jax.tree.map(lambda a: np.asarray(a).reshape(-1), carry.report)
        if self._trained_start is None and not passed.all():
            if int(report.trainings.max()) == 0:
                reason = (
                    "there was nothing to train on (tune=0, or a warm-up too short to "
                    "record trajectories and train: use tune >= 300)"
                )
            else:
                with warnings.catch_warnings():  # nanmean of all-NaN: no held-out pairs
                    warnings.simplefilter("ignore", RuntimeWarning)
                    error = np.nanmean(report.relative_error)
                reason = (
                    f"the surrogate's acceptance stayed below that of the true gradient "
                    f"minus {self.options['tolerance']} (last assessment: "
                    f"{np.nanmean(report.accept_surrogate):.2f} vs "
                    f"{np.nanmean(report.accept_true):.2f} after "
                    f"{int(report.trainings.max())} training runs; held-out relative "
                    f"gradient error {error:.3g})"
                )
            warnings.warn(
                f"NNgHMC samples with the true gradient: {reason}. The draws are exact "
                "either way; only the speed-up is lost.",
                UserWarning,
                stacklevel=2,
            )
        if self._trained_start is not None and not passed.all():
            warnings.warn(
                "NNgHMC: the trained surrogate does not fit this model's posterior, so the "
                "rest of warm-up and the draws used the true gradient (exact, at HMC's "
                "cost). Checked on this posterior, its trajectories were accepted with "
                f"mean probability {np.nanmean(report.accept_surrogate):.2f} against "
                f"{np.nanmean(report.accept_true):.2f} on the true gradient (tolerance "
                f"{self.options['tolerance']}): the posterior lies outside the region the "
                "surrogate was trained on (e.g. a prior moved far from the original "
                "posterior). Train a new NNgHMC() on this model to get the speed-up back.",
                UserWarning,
                stacklevel=2,
            )
        self.trained = self._snapshot(carry, batched)

    def _snapshot(self, carry, batched: bool) -> TrainedNNgHMC:
        def first(a):
            return np.asarray(a[0] if batched else a)

        spec = self.spec if self._trained_start is None else self._trained_start.spec
        surrogate = jax.tree.map(first, carry.surrogate)
        step_size = np.asarray(carry.step_size).reshape(-1)
        path_length = np.asarray(carry.path_length).reshape(-1)
        inverse_mass = np.asarray(carry.inverse_mass).reshape(-1, self.layout.dim)
        report = jax.tree.map(lambda a: float(np.asarray(a).reshape(-1)[0]), carry.report)
        return TrainedNNgHMC(
            spec=spec,
            surrogate_leaves=tuple(jax.tree.leaves(surrogate)),
            # The chains adapted separately; their medians (step size, λ) and mean
            # (posterior variance) describe the posterior better than any one chain.
            step_size=float(np.median(step_size)),
            inverse_mass=inverse_mass.mean(axis=0),
            path_length=float(np.median(path_length)),
            layout=self.layout.fingerprint(),
            passed=bool(np.asarray(carry.passed).all()),
            report={
                "trainings": int(report.trainings),
                "loss": json_float(report.loss),
                "relative_error": json_float(report.relative_error),
                "accept_true": json_float(report.accept_true),
                "accept_surrogate": json_float(report.accept_surrogate),
            },
        )

    # --- prior swap, save and load ---------------------------------------------------------
    @classmethod
    def from_trained(
        cls,
        source: NNgHMC | TrainedNNgHMC,
        vars=None,  # noqa: A002
        *,
        model=None,
        require_passed: bool = True,
        check_region: bool = True,
        **options,
    ) -> NNgHMC:
        """An NNgHMC for ``model`` that starts where ``source``'s warm-up ended.

        ``model`` must have the same parameter layout as the model ``source`` was trained
        on (variable names, shapes, transforms; ``LayoutMismatchError`` names the first
        variable that differs) and should differ only in its priors: the network stands for
        the likelihood's gradient and the new model's prior gradient is added exactly, so a
        prior swap needs no retraining. The likelihood is not checked; a different one
        costs acceptance, never correctness (the MH test uses the new model's density).

        The new step starts in surrogate mode with the trained network, standardisation,
        step size, mass matrix and path length, and never trains: its warm-up (``tune``)
        adapts step size, mass matrix and path length with the surrogate. Once, after 75
        warm-up iterations (``REGION_CHECK``; at the end of a shorter warm-up, at the
        start with ``tune=0``), the surrogate is checked on the new posterior: 32
        trajectories from the chains' current positions, on the surrogate and on the
        true gradient, compared by the training's pass rule (``tolerance``). A surrogate
        that fails -- the new posterior lies outside the region it was trained on -- hands
        the rest of warm-up and the draws to the true gradient, with a warning.
        ``check_region=False`` skips the check (sample with the surrogate whatever it is).

        ``options`` override the sampler settings copied from ``source``.
        """
        if isinstance(source, NNgHMC):
            trained = source.trained or source._trained_start
            if trained is None:
                raise ValueError(
                    "This NNgHMC step holds no trained surrogate: it has not finished a "
                    "warm-up in this process. Sample with it first (pm.sample with cores=1, "
                    "or pymc_neural_steps.sample; with cores > 1 training happens in worker "
                    "processes), or load a saved one with NNgHMC.load."
                )
            settings = dict(source.options)
        else:
            trained, settings = source, {}
        if require_passed and not trained.passed:
            raise ValueError(
                "The trained surrogate never passed its acceptance check, so it would "
                "sample slowly. Pass require_passed=False to use it anyway."
            )
        settings.update(options)
        step = cls(vars, model=model, **settings)
        step.layout.check_compatible(trained.layout, what="the model the surrogate was trained on")
        dim = step.layout.dim
        if trained.spec.dim != dim or np.shape(trained.inverse_mass) != (dim,):
            # Only an inconsistent (e.g. hand-edited) saved kernel gets here.
            raise LayoutMismatchError(
                f"the trained network has shape ({trained.spec.dim},) and the mass matrix "
                f"{np.shape(trained.inverse_mass)}, but the model's parameter vector has "
                f"shape ({dim},)"
            )
        _check_trained(trained, dim)
        step._trained_start = trained
        step._check_region = bool(check_region)
        return step

    def save(self, path) -> None:
        """Write the trained surrogate and warm-up results to directory ``path`` (``io.py``)."""
        from pymc_neural_steps import io

        trained = self.trained or self._trained_start
        if trained is None:
            raise ValueError(
                "Nothing to save: this NNgHMC step has not finished a warm-up in this process."
            )
        arrays, _ = TrainedNNgHMC.structure(trained.spec)
        arrays = jax.tree.unflatten(jax.tree.structure(arrays), list(trained.surrogate_leaves))
        io.save_kernel(
            path,
            kind="NNgHMC",
            arrays={"surrogate": arrays, "inverse_mass": trained.inverse_mass},
            layout=trained.layout,
            metadata={
                "surrogate_spec": trained.spec.to_json(),
                "step_size": trained.step_size,
                "path_length": trained.path_length,
                "passed": trained.passed,
                "report": trained.report,
                "options": self.options,
            },
        )

    @classmethod
    def load(cls, path, vars=None, *, model=None, **options) -> NNgHMC:  # noqa: A002
        """An NNgHMC for ``model`` from a directory written by ``save`` (no code is run).

        Refused with ``LayoutMismatchError`` naming the variable if ``model``'s layout
        differs from the saved one; otherwise as ``from_trained``.
        """
        from pymc_neural_steps import io

        layout, metadata = io.read_for_model(path, "NNgHMC", model, vars)
        spec = SurrogateSpec.from_json(metadata["surrogate_spec"])
        template, _ = TrainedNNgHMC.structure(spec)
        arrays = io.load_arrays(
            path, {"surrogate": template, "inverse_mass": np.zeros(spec.dim)}, metadata
        )
        trained = TrainedNNgHMC(
            spec=spec,
            surrogate_leaves=tuple(np.asarray(a) for a in jax.tree.leaves(arrays["surrogate"])),
            step_size=float(metadata["step_size"]),
            inverse_mass=np.asarray(arrays["inverse_mass"]),
            path_length=float(metadata["path_length"]),
            layout=metadata["layout"],
            passed=bool(metadata["passed"]),
            report=dict(metadata.get("report") or {}),
        )
        settings = {k: v for k, v in (metadata.get("options") or {}).items() if k in _STEP_OPTIONS}
        settings.update(options)
        return cls.from_trained(trained, vars, model=model, require_passed=False, **settings)


def _check_trained(trained: TrainedNNgHMC, dim: int) -> None:
    """Refuse a trained kernel (hand-made or read from disk) no chain could move with."""
    check_step_size(trained.step_size, name="the trained step_size")
    check_positive("the trained path_length", trained.path_length)
    check_inverse_mass(trained.inverse_mass, dim, name="the trained inverse_mass")
    # Weights are checked where they are read from disk (io.load_arrays); a hand-made
    # broken network stays usable, since the MH test keeps it exact (it never moves).


_NETWORK_OPTIONS = frozenset({"width", "depth", "activation", "block_size", "block_threshold"})
_STEP_OPTIONS = frozenset(
    {
        "target_accept", "max_steps", "step_size", "path_length", "buffer_size", "width",
        "depth", "activation", "block_size", "block_threshold", "train_steps", "batch_size",
        "learning_rate", "assess_trajectories", "tolerance", "first_training",
        "retrain_every", "adapt_mass",
    }
)
