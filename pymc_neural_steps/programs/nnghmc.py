"""NNgHMC's program: true-gradient warm-up that records, trains and assesses a surrogate.

Li, Holbrook, Shahbaba & Baldi, "Neural network gradient Hamiltonian Monte Carlo" (2019);
``algorithms.md`` §1. A chain warms up on the true gradient (``programs/hmc.py``'s
adaptation), recording leapfrog pairs (x, ∇ℓ(x)) in a ring buffer (``kernels/nnghmc.py``:
up to 16, evenly spaced, per trajectory); on a schedule (``trains_after``) a network is
fitted to the buffer (``training.fit_gradient_surrogate``) and assessed against the true
gradient on paired trajectories (``assess``); once it passes, the rest of warm-up and every draw run
on ∇log prior + ĝ_ℓ, exact by the MH test on the true density. A surrogate reused on
another model (a prior swap) is checked once on the new posterior
(``pooled_region_check``). Each piece is a function of its own:

* fields: ``logdensity_fn``, ``true_field``, ``surrogate_gradient``, ``state_at``;
* one chain: ``init_carry``, ``refresh``, ``tune_iteration`` (with ``path_length_update``,
  the U-turn estimate of λ), ``end_tune``, ``draw``;
* training: ``buffered_starts``, ``assess``, ``pooled_train``, ``pooled_region_check``;
* the schedule: ``trains_after``, ``region_check_after``.

Measurements behind the schedule and the defaults are in ``docs/design-notes.md`` (NNgHMC).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, mixing
from pymc_neural_steps.kernels import hmc
from pymc_neural_steps.kernels import nnghmc as kernel_lib
from pymc_neural_steps.programs.base import (
    COMMON_STATS,
    DEFAULT_MODE,
    TRAINING_TIME_STAT,
    ChainProgram,
    StatSpec,
    pack_stats,
)
from pymc_neural_steps.programs import gate as gates
from pymc_neural_steps.programs import rewarm as rewarms
from pymc_neural_steps.programs.hmc import HMC_STATS, initial_step_size, jittered_num_steps
from pymc_neural_steps.surrogate import SurrogateSpec
from pymc_neural_steps.trained import TrainedNNgHMC, json_float
from pymc_neural_steps.training import fit_gradient_surrogate, heldout_slots

__all__ = [
    "NNGHMC_STATS",
    "SURROGATE_MODE",
    "NNgHMCCarry",
    "NNgHMCSettings",
    "SurrogateReport",
    "UTurnEstimate",
    "assess",
    "buffered_starts",
    "nnghmc_program",
    "nnghmc_settings",
    "mixing_gate",
    "surrogate_gate",
    "pooled_region_check",
    "pooled_train",
    "region_check_after",
    "trained_from_carry",
    "trains_after",
]

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
STAT_SPECS = COMMON_STATS + HMC_STATS + NNGHMC_STATS
GRAD_EVALS = [spec.name for spec in STAT_SPECS].index("n_grad_evals")
LOGP_EVALS = [spec.name for spec in STAT_SPECS].index("n_logp_evals")

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
# The shortest λ the U-turn rule may set: HMC's default (``programs/hmc.py``), whitened units.
MIN_PATH_LENGTH = math.pi / 2
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


# --- the schedule (host side) -------------------------------------------------------------
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


# --- the carry and the settings ----------------------------------------------------------
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
    surrogate: Any  # the GradientSurrogate's arrays (its structure lives in the settings)
    passed: jax.Array
    report: SurrogateReport
    just_trained: jax.Array
    pending_grad_evals: jax.Array  # the last assessment's true gradients, not yet reported
    refresh_evals: jax.Array
    refresh_logp_evals: jax.Array
    extras: tuple  # the other step methods' variables (compound steps), for training
    region_checked: jax.Array  # a trained start's surrogate was checked on this posterior
    final_checked: jax.Array  # a fresh chain's surrogate was checked since the last warm-up
    #                           iteration (at the settings it would draw with); trained: True
    gate: gates.Gate  # the surrogate's pilot against true-gradient HMC (``mixing_gate``)
    pending_logp_evals: jax.Array  # the gate's log densities, not yet reported
    true_since: jax.Array  # true-gradient warm-up iterations since the last hand-back
    rewarm_owed: jax.Array  # handed back to the true gradient too late to re-adapt


class NNgHMCSettings(NamedTuple):
    """Everything static a chain's functions need (closed over, never traced)."""

    target: Any  # ``dim`` and ``density_terms(x, *extras) -> (prior, lik, pot)``
    structure: Any  # the surrogate's non-array part (``eqx.partition``)
    arrays0: Any  # the surrogate's arrays to start from
    step_size0: float
    inverse_mass0: Any
    path_length0: float
    report0: SurrogateReport
    capacity: int
    holdout: Any  # (capacity,) bool: the buffer's validation slots
    target_accept: float  # what warm-up aims for (a trained start's: see nnghmc_settings)
    user_target_accept: float  # the option as given (back to it if a region check fails)
    max_steps: int
    adapt_path: bool
    adapt_mass: bool
    train_steps: int
    batch_size: int
    learning_rate: float
    assess_trajectories: int
    tolerance: float
    first_training: int
    retrain_every: int
    trained: TrainedNNgHMC | None
    checks_region: bool


def nnghmc_settings(
    target,
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
) -> NNgHMCSettings:
    """The settings of a fresh chain, or of one that starts from ``trained``."""
    dim = target.dim
    user_target_accept = target_accept
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
    return NNgHMCSettings(
        target=target, structure=structure, arrays0=arrays0, step_size0=step_size0,
        inverse_mass0=inverse_mass0, path_length0=path_length0, report0=report0,
        capacity=capacity, holdout=jnp.asarray(heldout_slots(capacity)),
        target_accept=target_accept, user_target_accept=user_target_accept,
        max_steps=max_steps, adapt_path=path_length is None, adapt_mass=adapt_mass,
        train_steps=train_steps, batch_size=batch_size, learning_rate=learning_rate,
        assess_trajectories=assess_trajectories, tolerance=tolerance,
        first_training=first_training, retrain_every=retrain_every, trained=trained,
        checks_region=trained is not None and check_region,
    )


# --- fields --------------------------------------------------------------------------------
def logdensity_fn(target, extras):
    """x -> log p(x), -inf where the model gives NaN."""

    def logdensity(x):
        prior, lik, pot = target.density_terms(x, *extras)
        total = prior + lik + pot  # the order of Target.logdensity
        return jnp.where(jnp.isnan(total), -jnp.inf, total)

    return logdensity


def prior_gradient(target, extras):
    return jax.grad(lambda x: target.density_terms(x, *extras)[0])


def true_field(target, extras):
    """x -> (log p, ∇log p, ∇ℓ): one pass through the model, the prior's part apart."""

    def learned_part(x):
        prior, lik, pot = target.density_terms(x, *extras)
        return lik + pot, (prior, lik, pot)

    value_and_grad = jax.value_and_grad(learned_part, has_aux=True)
    grad_prior = prior_gradient(target, extras)

    def field(x):
        (_, (prior, lik, pot)), grad_learned = value_and_grad(x)
        total = prior + lik + pot
        total = jnp.where(jnp.isnan(total), -jnp.inf, total)
        return total, grad_prior(x) + grad_learned, grad_learned

    return field


def surrogate_gradient(target, surrogate, extras):
    """x -> ∇log prior(x) + ĝ_ℓ(x): the exact prior gradient plus the network's ∇ℓ."""
    grad_prior = prior_gradient(target, extras)
    return lambda x: grad_prior(x) + surrogate(x)


def _surrogate_of(settings: NNgHMCSettings, arrays):
    return eqx.combine(arrays, settings.structure)


def state_at(settings: NNgHMCSettings, arrays, passed, position, extras) -> hmc.HMCState:
    """The kernel state at ``position`` on the field in use (surrogate once ``passed``)."""
    target = settings.target

    def on_true_gradient():
        value, gradient, _ = true_field(target, extras)(position)
        return hmc.HMCState(position, value, gradient)

    def on_surrogate():
        gradient = surrogate_gradient(target, _surrogate_of(settings, arrays), extras)(position)
        return hmc.HMCState(position, logdensity_fn(target, extras)(position), gradient)

    return jax.lax.cond(passed, on_surrogate, on_true_gradient)


# --- one chain -----------------------------------------------------------------------------
def init_carry(settings: NNgHMCSettings, position, extras) -> NNgHMCCarry:
    s = settings
    extras = tuple(jnp.asarray(e) for e in extras)
    passed = jnp.asarray(s.trained is not None)
    state = state_at(s, s.arrays0, passed, jnp.asarray(position), extras)
    warmup = adaptation.warmup_init(
        s.target.dim, s.step_size0, s.target_accept, jnp.asarray(s.inverse_mass0)
    )
    zero_int = jnp.zeros((), jnp.int64)
    return NNgHMCCarry(
        state=state,
        warmup=warmup,
        step_size=jnp.asarray(s.step_size0, jnp.float64),
        inverse_mass=warmup.inverse_mass,
        path_length=jnp.asarray(s.path_length0, jnp.float64),
        step_floor=jnp.zeros((), jnp.float64),
        uturn=UTurnEstimate(jnp.zeros(()), jnp.zeros(())),
        buffer=kernel_lib.buffer_init(s.capacity, s.target.dim),
        collecting=jnp.zeros((), bool),
        surrogate=jax.tree.map(jnp.asarray, s.arrays0),
        passed=passed,
        report=SurrogateReport(*(jnp.asarray(v, jnp.float64) for v in s.report0)),
        just_trained=jnp.zeros((), bool),
        pending_grad_evals=zero_int,
        refresh_evals=zero_int,
        refresh_logp_evals=zero_int,
        extras=extras,
        region_checked=jnp.asarray(not s.checks_region),
        final_checked=jnp.asarray(s.trained is not None),
        gate=gates.undecided(s.trained),
        pending_logp_evals=zero_int,
        true_since=zero_int,
        rewarm_owed=jnp.zeros((), bool),
    )


def refresh(settings: NNgHMCSettings, carry: NNgHMCCarry, position, extras) -> NNgHMCCarry:
    """Adopt a position (and extras) set from outside: another step method may have moved
    the position or changed the other variables, and the cached state is then stale."""
    extras = tuple(jnp.asarray(e) for e in extras)

    def fresh():
        return state_at(settings, carry.surrogate, carry.passed, position, extras)

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


def transition_kernel(settings: NNgHMCSettings, mode, carry, extras, *, warm):
    """The transition of this mode; in warm-up it finds U-turns and may record."""
    s, target = settings, settings.target
    if mode == SURROGATE_MODE:
        surrogate = _surrogate_of(s, carry.surrogate)
        gradient = surrogate_gradient(target, surrogate, extras)
        field = lambda x: (jnp.zeros((), x.dtype), gradient(x), None)  # noqa: E731
        return kernel_lib.build_kernel(
            logdensity_fn(target, extras), field, exact=False,
            find_uturn=warm and s.adapt_path, max_steps=s.max_steps,
        )
    record = None
    if warm and s.trained is None:
        collecting = carry.collecting

        def record(buffer, positions, learned_gradients, n):
            n = jnp.where(collecting, n, 0)
            return kernel_lib.buffer_push_many(buffer, positions, learned_gradients, n)

    return kernel_lib.build_kernel(
        logdensity_fn(target, extras), true_field(target, extras), exact=True,
        find_uturn=warm and s.adapt_path, max_steps=s.max_steps, record=record,
    )


def pack_nnghmc_stats(info, state, step_size, carry: NNgHMCCarry, mode) -> jax.Array:
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
        info.n_logp_evals + carry.refresh_logp_evals + carry.pending_logp_evals,
        carry.report.relative_error,
        carry.report.loss,
        carry.just_trained,
        info.is_nonfinite & (mode == SURROGATE_MODE),
        0.0,  # training_time: filled on the host
    )


def reported(carry: NNgHMCCarry) -> NNgHMCCarry:
    """The carry once its one-off counts (refresh, assessment gradients) are in the stats."""
    zero = jnp.zeros((), jnp.int64)
    return carry._replace(
        refresh_evals=zero,
        refresh_logp_evals=zero,
        pending_grad_evals=zero,
        pending_logp_evals=zero,
        just_trained=jnp.zeros((), bool),
    )


def path_length_update(uturn: UTurnEstimate, path_length, uturn_steps, step_size, code,
                       floor=MIN_PATH_LENGTH):
    """λ as half the mean first-U-turn time since the mass matrix last changed, never
    below ``floor``.

    A change after this iteration (``code == SLOW_END``) discards the old metric's times;
    λ keeps its last value until new ones arrive. The floor is HMC's own λ (π/2 in the
    whitened units of the mass matrix): on a posterior that a diagonal mass matrix cannot
    whiten (strong correlations), the first U-turn comes after a half-oscillation across
    the narrowest direction, and half of it is far too short to cross the longest one
    (a regression on uncentred calendar years: 9 leapfrog steps against JaxHMC's 307,
    R-hat 3.2). With the floor NNgHMC's trajectories are never shorter than those of the
    HMC it is measured against."""
    seen = uturn_steps > 0
    total = uturn.total + jnp.where(seen, uturn_steps * step_size, 0.0)
    count = uturn.count + seen
    estimate = jnp.maximum(0.5 * total / jnp.maximum(count, 1), floor)
    path_length = jnp.where(count > 0, estimate, path_length)
    reset = code == adaptation.SLOW_END
    uturn = UTurnEstimate(jnp.where(reset, 0.0, total), jnp.where(reset, 0.0, count))
    return uturn, path_length


def tune_iteration(settings: NNgHMCSettings, key, carry: NNgHMCCarry, code, extras,
                   mode=DEFAULT_MODE):
    """One warm-up iteration: a transition (recording, finding U-turns), then adaptation."""
    s = settings
    step_size = jnp.maximum(adaptation.current_step_size(carry.warmup), carry.step_floor)
    inverse_mass = carry.warmup.inverse_mass
    key_steps, key_kernel = jax.random.split(key)
    num_steps = jittered_num_steps(key_steps, step_size, carry.path_length, s.max_steps)
    carry = carry._replace(collecting=carry.collecting | (code >= adaptation.SLOW))
    kernel = transition_kernel(s, mode, carry, carry.extras, warm=True)
    params = hmc.HMCParams(step_size, inverse_mass, num_steps)
    continuing = carry.uturn.count < UTURN_SAMPLES
    state, info, buffer = kernel(key_kernel, carry.state, params, carry.buffer, continuing)
    packed = pack_nnghmc_stats(info, state, step_size, carry, mode)

    code = code if s.adapt_mass else jnp.minimum(code, adaptation.FAST)
    warmup = adaptation.warmup_update(carry.warmup, code, state.position, info.acceptance_rate)
    step_floor = carry.step_floor
    if s.trained is not None and s.adapt_mass:
        step_floor = jnp.where(
            code == adaptation.SLOW_END,
            jnp.maximum(step_floor, STEP_FLOOR * s.trained.step_size),
            step_floor,
        )
    true_since, rewarm_owed = carry.true_since, carry.rewarm_owed
    if mode == DEFAULT_MODE:
        true_since = true_since + 1
        rewarm_owed = rewarm_owed & (true_since < rewarms.ENOUGH)
    uturn, path_length = carry.uturn, carry.path_length
    if s.adapt_path:
        uturn, path_length = path_length_update(uturn, path_length, info.uturn_steps,
                                                step_size, code)
    carry = reported(carry)._replace(
        state=state,
        warmup=warmup,
        buffer=buffer,
        uturn=uturn,
        path_length=path_length,
        step_floor=step_floor,
        true_since=true_since,
        rewarm_owed=rewarm_owed,
        # The settings moved: a fresh chain's surrogate is owed a check at the end.
        final_checked=carry.final_checked & (s.trained is not None),
    )
    return carry, state.position, packed


def end_tune(carry: NNgHMCCarry) -> NNgHMCCarry:
    step_size, inverse_mass = adaptation.warmup_final(carry.warmup)
    step_size = jnp.maximum(step_size, carry.step_floor)
    return carry._replace(step_size=step_size, inverse_mass=inverse_mass)


def draw(settings: NNgHMCSettings, key, carry: NNgHMCCarry, extras, mode=DEFAULT_MODE):
    key_steps, key_kernel = jax.random.split(key)
    num_steps = jittered_num_steps(key_steps, carry.step_size, carry.path_length,
                                   settings.max_steps)
    kernel = transition_kernel(settings, mode, carry, carry.extras, warm=False)
    params = hmc.HMCParams(carry.step_size, carry.inverse_mass, num_steps)
    state, info, _ = kernel(key_kernel, carry.state, params)
    packed = pack_nnghmc_stats(info, state, carry.step_size, carry, mode)
    return reported(carry)._replace(state=state), state.position, packed


# --- training and assessment (batched carry: every chain) ----------------------------------
def start_slots(key, buffer, n, holdout):
    """n buffer slots to start assessment trajectories from: held-out pairs if any."""
    capacity = holdout.shape[0]
    valid = jnp.arange(capacity) < jnp.minimum(buffer.count, capacity)
    held = valid & holdout
    use = jnp.where(jnp.any(held), held, valid)
    weights = jnp.where(jnp.any(use), use / jnp.maximum(use.sum(), 1), 1.0 / capacity)
    return jax.random.choice(key, capacity, (n,), p=weights)


def buffered_starts(key, carry: NNgHMCCarry, per_chain, holdout):
    """``per_chain`` buffered positions of every chain, held-out ones if any."""
    chains = carry.passed.shape[0]
    slots = jax.vmap(start_slots, (0, 0, None, None))(
        jax.random.split(key, chains), carry.buffer, per_chain, holdout
    )
    return jax.vmap(lambda xs, i: xs[i])(carry.buffer.positions, slots)


def assess(settings: NNgHMCSettings, key, arrays, carry: NNgHMCCarry, positions):
    """Paired trajectories (true vs surrogate) from ``positions`` (chains, per chain,
    d), at each chain's current step size, metric and path length.

    Returns the mean acceptances, the true gradients each chain spent, and the standard
    error of the mean paired shortfall (true − surrogate acceptance)."""
    target = settings.target
    chains, per_chain = positions.shape[:2]
    key_steps, key_pairs = jax.random.split(key)
    # Dual averaging's averaged step size (its iterate oscillates around it), floored as
    # the transitions floor it: the step size the draws would use if warm-up ended now.
    step_size, _ = jax.vmap(adaptation.warmup_final)(carry.warmup)
    step_size = jnp.maximum(step_size, carry.step_floor)

    # One flat batch of chains × per_chain pairs (a nested vmap compiles much slower).
    def per_pair(a):
        return jnp.repeat(a, per_chain, axis=0)

    pair_step_size = per_pair(step_size)
    num_steps = jax.vmap(jittered_num_steps, (0, 0, 0, None))(
        jax.random.split(key_steps, chains * per_chain),
        pair_step_size,
        per_pair(carry.path_length),
        settings.max_steps,
    )

    def one_pair(key, position, step_size, inverse_mass, num_steps, extras):
        field = true_field(target, extras)
        return kernel_lib.paired_acceptance(
            key,
            position,
            hmc.HMCParams(step_size, inverse_mass, num_steps),
            lambda x: field(x)[:2],
            surrogate_gradient(target, _surrogate_of(settings, arrays), extras),
            logdensity_fn(target, extras),
        )

    accept_true, accept_surrogate = jax.vmap(one_pair)(
        jax.random.split(key_pairs, chains * per_chain),
        positions.reshape(chains * per_chain, target.dim),
        pair_step_size,
        per_pair(carry.warmup.inverse_mass),
        num_steps,
        jax.tree.map(per_pair, carry.extras),
    )
    spent = jnp.sum((num_steps + 1).reshape(chains, per_chain), axis=1)
    shortfall = accept_true - accept_surrogate
    error = jnp.std(shortfall) / jnp.sqrt(shortfall.size)
    return jnp.mean(accept_true), jnp.mean(accept_surrogate), spent, error


def _per_chain(settings: NNgHMCSettings, chains: int) -> int:
    return max(1, -(-settings.assess_trajectories // chains))


def fit_pooled(settings: NNgHMCSettings, key, carry: NNgHMCCarry):
    """One network fitted on every chain's buffer, warm-started from the current one."""
    start = _surrogate_of(settings, jax.tree.map(lambda a: a[0], carry.surrogate))
    fitted, fit = fit_gradient_surrogate(
        key,
        start,
        carry.buffer.positions,
        carry.buffer.gradients,
        carry.buffer.count,
        steps=settings.train_steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
    )
    return eqx.filter(fitted, eqx.is_array), fit


def _train_once(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    chains = carry.passed.shape[0]
    per_chain = _per_chain(settings, chains)
    key_fit, key_assess = jax.random.split(key)
    arrays, fit = fit_pooled(settings, key_fit, carry)
    fitted_ok = jnp.isfinite(fit.loss)

    def skip(_):
        nan = jnp.full((), jnp.nan, jnp.float64)
        return nan, nan, jnp.zeros(chains, jnp.int64), nan

    key_assess, key_starts = jax.random.split(key_assess)
    starts = buffered_starts(key_starts, carry, per_chain, settings.holdout)
    accept_true, accept_surrogate, spent, _ = jax.lax.cond(
        fitted_ok, lambda _: assess(settings, key_assess, arrays, carry, starts), skip, None
    )
    passed = fitted_ok & (accept_surrogate >= accept_true - settings.tolerance)
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
    surrogate = _surrogate_of(settings, arrays)
    on_surrogate = jax.vmap(
        lambda x, e: surrogate_gradient(settings.target, surrogate, e)(x)
    )(carry.state.position, carry.extras)
    state = carry.state._replace(gradient=jnp.where(passed, on_surrogate, carry.state.gradient))
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


def pooled_train(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    """Fit one network on every chain's buffer, assess it on every chain, share it; a
    surrogate that passes (``tolerance``) takes over the chains' field."""
    # A passed surrogate is left alone (``pooled_step`` checks it instead).
    return jax.lax.cond(
        jnp.all(carry.passed), lambda c: c, lambda c: _train_once(settings, key, c), carry
    )


def check_passes(settings: NNgHMCSettings, accept_true, accept_surrogate, target_accept,
                 error):
    """The pass rule of a check after the switch: the surrogate's acceptance is within
    ``tolerance`` of the true gradient's on the same trajectories, or of the acceptance
    its step size adapts to (``surrogate_target``: the shortfall measured when it passed
    is allowed for by design, and ε grows with it), whichever is lower -- allowing two
    standard errors of the measured shortfall (``error``: 32 pairs from a few starting
    points are noisy, and a false alarm throws the speed-up away)."""
    goal = jnp.minimum(accept_true, jnp.mean(target_accept))
    return accept_surrogate >= goal - settings.tolerance - 2.0 * jnp.nan_to_num(error)


def pooled_region_check(settings: NNgHMCSettings, key, carry: NNgHMCCarry,
                        restart_step_size=None, lenient=False, veto=None) -> NNgHMCCarry:
    """A trained start's surrogate against the true gradient on THIS posterior: paired
    trajectories from every chain's current position (momenta drawn afresh), the pass
    rule of training. A surrogate that fails (the posterior has left the region it was
    trained on, e.g. under a prior moved far) hands the rest of warm-up and the draws
    to the true gradient: exact and tuned, at HMC's cost.

    ``restart_step_size`` (per chain): where it fails, dual averaging restarts there (the
    step size adapted to a failing surrogate's acceptance may have collapsed towards 0,
    held up only by the floor); None keeps it going. ``lenient`` applies ``check_passes``
    (a fresh chain's re-check) instead of training's rule (a trained start: the surrogate
    has not been measured on this posterior at all). ``veto`` fails the check whatever
    the acceptances (the mixing gate decided against the surrogate)."""
    chains = carry.passed.shape[0]
    per_chain = _per_chain(settings, chains)
    starts = jnp.repeat(carry.state.position[:, None, :], per_chain, axis=1)
    arrays = jax.tree.map(lambda a: a[0], carry.surrogate)
    accept_true, accept_surrogate, spent, error = assess(settings, key, arrays, carry, starts)
    if lenient:
        fits = check_passes(settings, accept_true, accept_surrogate,
                            carry.warmup.target_accept, error)
    else:
        fits = accept_surrogate >= accept_true - settings.tolerance
    if veto is not None:
        fits = fits & ~veto
    fields = jax.vmap(lambda x, e: true_field(settings.target, e)(x))(
        carry.state.position, carry.extras
    )
    state = carry.state._replace(
        logdensity=jnp.where(fits, carry.state.logdensity, fields[0]),
        gradient=jnp.where(fits, carry.state.gradient, fields[1]),
    )
    warmup = carry.warmup._replace(
        target_accept=jnp.where(fits, carry.warmup.target_accept, settings.user_target_accept)
    )
    if restart_step_size is not None:
        restarted = jax.vmap(adaptation.dual_averaging_init)(restart_step_size)
        keep = lambda a, b: jnp.where(fits, a, b)  # noqa: E731
        warmup = warmup._replace(
            dual_averaging=jax.tree.map(keep, warmup.dual_averaging, restarted)
        )
    # A chain handed back discards the variance collected under the surrogate (a chain
    # that did not travel underestimates it): the next window is the true gradient's.
    handed_back = carry.passed & ~fits
    fresh = jax.vmap(lambda x: adaptation.welford_init(x.shape[-1]))(carry.state.position)
    warmup = warmup._replace(welford=jax.tree.map(
        lambda a, b: jnp.where(_rows(handed_back, a), a, b), fresh, warmup.welford))
    report = carry.report._replace(
        accept_true=jnp.broadcast_to(accept_true, (chains,)),
        accept_surrogate=jnp.broadcast_to(accept_surrogate, (chains,)),
    )
    return carry._replace(
        true_since=jnp.where(handed_back, 0, carry.true_since),
        rewarm_owed=carry.rewarm_owed | handed_back,
        state=state,
        warmup=warmup,
        step_floor=jnp.where(fits, carry.step_floor, 0.0),
        passed=jnp.broadcast_to(fits, (chains,)),
        report=report,
        region_checked=jnp.ones(chains, bool),
        pending_grad_evals=carry.pending_grad_evals + spent,
    )


def _rows(flags, array):
    """Per-chain ``flags`` (c,) shaped to broadcast against ``array`` (c, ...)."""
    return flags.reshape(flags.shape + (1,) * (array.ndim - 1))


def _pilot_start(carry: NNgHMCCarry):
    return carry.state, carry.refresh_evals


def _gate_pilots(settings: NNgHMCSettings, key, carry: NNgHMCCarry, *, with_true: bool):
    """Pilots of the surrogate (and, ``with_true``, of true-gradient HMC) from recorded
    warm-up positions of every chain, at the step size, mass matrix and λ the chains
    would draw with now. Returns (surrogate pilots, true pilots or None, log densities
    spent per chain)."""
    chains = carry.passed.shape[0]
    per_chain = max(1, -(-gates.PILOT_WALKERS // chains))
    key_starts, key_pilots = jax.random.split(key)
    starts = buffered_starts(key_starts, carry, per_chain, settings.holdout)
    # The averaged step size, floored: what the draws would use if warm-up ended now.
    step_size, _ = jax.vmap(adaptation.warmup_final)(carry.warmup)
    step_size = jnp.maximum(step_size, carry.step_floor)
    zero = jnp.zeros(chains, jnp.int64)
    pilot_carry = carry._replace(step_size=step_size, inverse_mass=carry.warmup.inverse_mass,
                                 pending_grad_evals=zero, pending_logp_evals=zero)
    place = partial(refresh, settings)

    def run(key, chain, chain_starts, mode, passed, steps):
        return gates.pilot(partial(draw, settings, mode=mode), place, key,
                           chain._replace(passed=jnp.asarray(passed)), chain_starts,
                           chain.extras, steps, _pilot_start)

    def both(key, chain, chain_starts):
        key_surrogate, key_true = jax.random.split(key)
        surrogate = run(key_surrogate, chain, chain_starts, SURROGATE_MODE, True,
                        gates.LEARNED_PILOT_STEPS)
        if not with_true:
            return surrogate, None
        return surrogate, run(key_true, chain, chain_starts, DEFAULT_MODE, False,
                              gates.HMC_PILOT_STEPS)

    surrogate, true = jax.vmap(both)(jax.random.split(key_pilots, chains), pilot_carry, starts)
    logp_spent = jnp.full(chains, per_chain * (gates.LEARNED_PILOT_STEPS + 1), jnp.int64)
    return surrogate, true, logp_spent


def mixing_gate(settings: NNgHMCSettings, key, carry: NNgHMCCarry):
    """The surrogate against true-gradient HMC by mixing (``programs/gate.py``), both
    piloted from the same recorded warm-up positions. Scored per true gradient, the
    surrogate's pilot costs one (its transitions spend log densities only); what decides
    against it in practice is an ESS estimate that is not *resolved* within the pilot --
    a kernel that accepts its moves but does not travel.

    Returns (gate, true gradients, log densities spent per chain)."""
    surrogate, true, logps = _gate_pilots(settings, key, carry, with_true=True)
    return gates.score_pilots(surrogate, true), (surrogate[3] + true[3]).astype(jnp.int64), logps


def surrogate_gate(settings: NNgHMCSettings, key, carry: NNgHMCCarry):
    """``mixing_gate`` again once HMC has been piloted: only the surrogate's pilot runs
    (log densities only), against the HMC score measured the first time. The surrogate
    changes with every fit and its step size with every adaptation window, HMC's mixing
    hardly at all, and HMC's pilot costs hundreds of trajectories."""
    surrogate, _, logps = _gate_pilots(settings, key, carry, with_true=False)
    x = surrogate[0].reshape(-1, *surrogate[0].shape[2:])
    logdensity = surrogate[1].reshape(-1, surrogate[1].shape[-1])
    dim = x.shape[-1]
    estimate = mixing.worst_direction(x, logdensity, mixing.principal_directions(x.reshape(-1, dim)))
    score = estimate.ess_per_step / jnp.maximum(jnp.mean(surrogate[2]), 1.0)
    hmc_score = carry.gate.hmc_score[0]
    gate = gates.Gate(jnp.asarray(True), estimate.resolved & (score > hmc_score), score,
                      hmc_score, estimate.resolved, carry.gate.hmc_resolved[0],
                      jnp.ones((), jnp.int64))
    return gate, surrogate[3].astype(jnp.int64), logps


def final_check(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    """A fresh chain's surrogate that passed, checked again: paired trajectories from
    every chain's current position at the settings the chain would draw with now (the
    averaged step size, the mass matrix and λ), the pass rule of training, and the mixing
    gate. It runs at every training point after the surrogate passed, and once more when
    warm-up ends unless nothing changed since (``final_checked``).

    Training assessed the surrogate at the step size of that moment and from recorded
    positions; afterwards ε adapts to the surrogate's own acceptance and λ grows, and a
    surrogate that was good enough then may not be now (a regression on uncentred
    calendar years: it passed, then accepted 10% of the draws, R-hat 2.5). Acceptance is
    not mixing, either: on posteriordb's earnings regression a surrogate accepted 80% of
    its moves and returned R-hat 2.0. So every check also runs the mixing gate
    (``mixing_gate`` the first time, ``surrogate_gate`` after). One that fails either
    test hands the chains back to the true gradient, with dual averaging restarted at the true gradient's step
    size of the switch; in warm-up, training then goes on at the next training point."""
    key_check, key_gate = jax.random.split(key)
    gate, grads, logps = jax.lax.cond(
        jnp.all(carry.gate.decided),
        lambda c: surrogate_gate(settings, key_gate, c),
        lambda c: mixing_gate(settings, key_gate, c),
        carry,
    )
    chains = carry.passed.shape[0]
    switch_step_size = carry.step_floor / STEP_FLOOR
    checked = pooled_region_check(settings, key_check, carry, restart_step_size=switch_step_size,
                                  lenient=True, veto=~gate.use_learned)
    # Reported as a training run: its time and true gradients are part of training's.
    return checked._replace(
        final_checked=jnp.ones_like(carry.final_checked),
        just_trained=jnp.ones_like(carry.just_trained),
        gate=jax.tree.map(lambda a: jnp.broadcast_to(a, (chains,)), gate),
        pending_grad_evals=checked.pending_grad_evals + grads,
        pending_logp_evals=checked.pending_logp_evals + logps,
    )


def rewarm_chains(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    """Chains handed back to the true gradient with too little warm-up left
    (``rewarm_owed``) re-adapt on it (``programs/rewarm.py``); reported as training."""

    def one(key, chain):
        tune = lambda k, c, code: tune_iteration(settings, k, c, code, c.extras)  # noqa: E731
        # The counts the chain had pending are in the first iteration's stats.
        tuned, totals = rewarms.rewarm(tune, key, chain)
        return tuned._replace(
            pending_grad_evals=totals[GRAD_EVALS].astype(jnp.int64),
            pending_logp_evals=totals[LOGP_EVALS].astype(jnp.int64),
            just_trained=jnp.ones((), bool),
            rewarm_owed=jnp.zeros((), bool),
        )

    return jax.vmap(one)(jax.random.split(key, carry.passed.shape[0]), carry)


def pooled_step(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    """What the drivers' training call does: re-adapt chains handed back late
    (``rewarm_chains``), or train, check a passed surrogate at the end of warm-up
    (``final_check``), or check a trained start once."""
    return jax.lax.cond(
        jnp.all(carry.rewarm_owed),
        lambda c: rewarm_chains(settings, key, c),
        lambda c: _checked_step(settings, key, c),
        carry,
    )


def _checked_step(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    if settings.trained is None:
        return jax.lax.cond(
            jnp.all(carry.passed),
            lambda c: final_check(settings, key, c),
            lambda c: _train_once(settings, key, c),
            carry,
        )
    if not settings.checks_region:
        return pooled_train(settings, key, carry)
    return jax.lax.cond(
        jnp.all(carry.region_checked),
        lambda c: c,
        lambda c: pooled_region_check(settings, key, c),
        carry,
    )


def train_chain(settings: NNgHMCSettings, key, carry: NNgHMCCarry) -> NNgHMCCarry:
    """``pooled_step`` on one chain (``pm.sample``: each chain trains its own network)."""
    batched = jax.tree.map(lambda a: a[None], carry)
    return jax.tree.map(lambda a: a[0], pooled_step(settings, key, batched))


# --- host side ------------------------------------------------------------------------------
def mode_of(carry) -> str:
    passed = np.asarray(carry.passed)
    if passed.all():
        return SURROGATE_MODE
    if not passed.any():
        return DEFAULT_MODE
    raise RuntimeError("chains disagree on whether the shared surrogate passed")


def done_training(settings: NNgHMCSettings, carry) -> bool:
    """A trained start is done once checked; a fresh chain never is: after its surrogate
    passed, every training point checks it again (``final_check``)."""
    if settings.trained is not None:
        return bool(np.asarray(carry.region_checked).all())
    return False


def _never(iteration, num_tune) -> bool:
    return False


def _at_region_check(iteration, num_tune) -> bool:
    return iteration + 1 == region_check_after(num_tune)


def _trains(settings: NNgHMCSettings, iteration, num_tune) -> bool:
    return trains_after(iteration, num_tune, settings.first_training, settings.retrain_every)


def _rewarm_owed(carry) -> bool:
    return bool(np.asarray(carry.rewarm_owed).all())


def _training_owed(settings: NNgHMCSettings, carry) -> bool:
    return not done_training(settings, carry) or _rewarm_owed(carry)


def _final_check_owed(carry) -> bool:
    """A fresh chain owes ``final_check`` when warm-up ends if its surrogate passed, and
    a re-warm-up if a check handed it back to the true gradient too late."""
    passed = np.asarray(carry.passed).all()
    return bool(passed and not np.asarray(carry.final_checked).all()) or _rewarm_owed(carry)


def schedule(settings: NNgHMCSettings):
    """(train_at, train_pending): training on ``trains_after``'s schedule for a fresh
    chain, and its ``final_check`` owed when warm-up ends; for a trained start, one region
    check after ``region_check_after`` iterations (owed at the end of a shorter warm-up),
    or nothing with ``check_region=False``."""
    if settings.trained is None:
        return partial(_trains, settings), _final_check_owed
    if not settings.checks_region:
        return _never, None
    return _at_region_check, partial(_training_owed, settings)


def nnghmc_program(target, **options) -> ChainProgram:
    """The ``ChainProgram`` of NNgHMC on ``target`` (fresh, or starting from
    ``trained=``; ``check_region=False`` skips the check of ``trained`` on this
    posterior). ``options`` are ``nnghmc_settings``'s."""
    settings = nnghmc_settings(target, **options)
    train_at, train_pending = schedule(settings)
    return ChainProgram(
        init=partial(init_carry, settings),
        tune=partial(tune_iteration, settings),
        end_tune=end_tune,
        draw=partial(draw, settings),
        refresh=partial(refresh, settings),
        stat_specs=STAT_SPECS,
        train=partial(train_chain, settings),
        pooled_train=partial(pooled_step, settings),
        train_at=train_at,
        mode_of=mode_of,
        done_training=partial(done_training, settings),
        train_pending=train_pending,
    )


def trained_from_carry(carry: NNgHMCCarry, *, batched: bool, spec: SurrogateSpec,
                       layout: dict) -> TrainedNNgHMC:
    """What a warm-up learned (host-side carry, every chain's when ``batched``)."""

    def first(a):
        return np.asarray(a[0] if batched else a)

    dim = int(layout["dim"])
    surrogate = jax.tree.map(first, carry.surrogate)
    step_size = np.asarray(carry.step_size).reshape(-1)
    path_length = np.asarray(carry.path_length).reshape(-1)
    inverse_mass = np.asarray(carry.inverse_mass).reshape(-1, dim)
    report = jax.tree.map(lambda a: float(np.asarray(a).reshape(-1)[0]), carry.report)
    gate = jax.tree.map(lambda a: np.asarray(a).reshape(-1)[0], carry.gate)
    return TrainedNNgHMC(
        spec=spec,
        surrogate_leaves=tuple(jax.tree.leaves(surrogate)),
        # The chains adapted separately; their medians (step size, λ) and mean
        # (posterior variance) describe the posterior better than any one chain.
        step_size=float(np.median(step_size)),
        inverse_mass=inverse_mass.mean(axis=0),
        path_length=float(np.median(path_length)),
        layout=layout,
        passed=bool(np.asarray(carry.passed).all()),
        report={
            "trainings": int(report.trainings),
            "loss": json_float(report.loss),
            "relative_error": json_float(report.relative_error),
            "accept_true": json_float(report.accept_true),
            "accept_surrogate": json_float(report.accept_surrogate),
            "gate_learned_ess_per_grad": json_float(gate.learned_score),
            "gate_hmc_ess_per_grad": json_float(gate.hmc_score),
            "gate_use_learned": bool(np.asarray(carry.passed).all() and gate.decided and gate.use_learned),
        },
    )
