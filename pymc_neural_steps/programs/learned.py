"""The warm-up every learned kernel shares: adapt HMC, train on a walker ensemble, freeze.

L2HMC (Levy et al. 2018, §5: a learned leapfrog trained on parallel chains) and the
proposal-entropy sampler (Li et al. 2021, §3.3: a flow trained on a bootstrapped buffer)
follow one skeleton, written here once:

1. *HMC warm-up*: true-gradient HMC with Stan's step-size and diagonal-mass adaptation
   (``programs/hmc.py``) on a schedule of its own, ``hmc_warmup`` iterations long.
   It gives the whitening the learned kernel works in and its initial step size.
2. *Training*: a budget of optimiser steps on an ensemble of walkers (``ensemble.py``),
   spread over the rest of warm-up in rounds (``training_rounds``); what a short or
   open-ended warm-up leaves is finished when it ends (``ChainProgram.train_pending``).
   ``pymc_neural_steps.sample`` trains ONE kernel for all chains (``pooled_train``): the
   first few walkers of every chain form one shared ensemble.
3. *The chain itself runs HMC for the whole warm-up*, adapting on Stan's schedule of the
   whole warm-up (``hmc_code``) while training moves only the walkers, so when warm-up
   ends it is exactly as tuned (and as converged) as ``JaxHMC`` would be.
4. *The gate* (``programs/gate.py``), when warm-up ends: pilots of the learned kernel and
   of that final HMC from the same walkers measure ESS per true gradient in the worst
   direction; the learned kernel draws, frozen, from the chain's HMC position, only if it
   wins, with the transitions per draw the gate chose. Otherwise the chain draws with HMC.

A method supplies the pieces that differ (``LearnedMethod``); ``learned_program``
assembles them into a ``ChainProgram``. Nothing here knows PyMC.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, ensemble
from pymc_neural_steps.programs import gate as gates
from pymc_neural_steps.programs import hmc as hmc_programs
from pymc_neural_steps.programs.base import ChainProgram, StatSpec, pack_stats

__all__ = [
    "DEFAULT_TUNE_HORIZON",
    "HMC_MODE",
    "MAX_ROUNDS",
    "TRAINING_STATS",
    "LearnedMethod",
    "TrainingReport",
    "add_reports",
    "center_update",
    "empty_report",
    "end_chain",
    "end_pooled",
    "gate_at_end",
    "hmc_code",
    "hmc_warmup_iteration",
    "gather_ensemble",
    "learned_program",
    "mixture_moments",
    "pack_report",
    "refresh_training",
    "repeat_transitions",
    "scatter_ensemble",
    "summary_report",
    "train_chain",
    "train_pooled",
    "training_pending",
    "training_rounds",
    "walkers_per_chain",
]

HMC_MODE = "hmc"

# PyMC 5 does not tell a step how long warm-up is; training rounds are then placed as if
# it were pm.sample's default, and what is left is trained at stop_tuning.
DEFAULT_TUNE_HORIZON = 1000
MAX_ROUNDS = 20
# Training's rounds end by this share of the warm-up after HMC's; the rest of warm-up is
# HMC's adaptation alone (its last, longest window), and the gate runs when it ends.
TRAINING_END = 0.6

# The stats of training, reported on the iteration after it ran (0 / NaN when none did).
TRAINING_STATS = (
    StatSpec("training_steps", np.int64),
    StatSpec("training_rollbacks", np.int64),  # steps rejected as non-finite
    StatSpec("training_loss", np.float64),  # mean loss of the accepted steps
    StatSpec("training_acceptance", np.float64),  # mean acceptance of the walkers
    # Forward true gradients of training on this chain's share of the walkers (the reverse
    # pass through them is not counted); summed over chains, the total.
    StatSpec("training_grad_evals", np.int64),
    # Wall seconds of training, measured by the driver; a pooled run reports its full
    # time on every chain (the chains wait for it together).
    StatSpec("training_time", np.float64),
)


class TrainingReport(NamedTuple):
    """Training since the last reported iteration, for the next iteration's stats."""

    steps: jax.Array
    rollbacks: jax.Array
    loss: jax.Array
    acceptance: jax.Array
    grad_evals: jax.Array
    restored: jax.Array  # L2HMC: 1 when the end-of-budget guard swapped in the best kernel
    gate_grad_evals: jax.Array  # the gate's pilots (all of them)


def empty_report(dtype=jnp.float64) -> TrainingReport:
    zero = jnp.zeros((), jnp.int64)
    nan = jnp.full((), jnp.nan, dtype)
    return TrainingReport(zero, zero, nan, nan, zero, zero, zero)


def add_reports(a: TrainingReport, b: TrainingReport) -> TrainingReport:
    """Two pieces of training reported together (NaN-aware, step-weighted means)."""

    def mean(x, y):
        wx, wy = a.steps - a.rollbacks, b.steps - b.rollbacks
        x0, y0 = jnp.where(wx > 0, x, 0.0), jnp.where(wy > 0, y, 0.0)
        total = wx + wy
        return jnp.where(total > 0, (wx * x0 + wy * y0) / jnp.maximum(total, 1), jnp.nan)

    return TrainingReport(
        steps=a.steps + b.steps,
        rollbacks=a.rollbacks + b.rollbacks,
        loss=mean(a.loss, b.loss),
        acceptance=mean(a.acceptance, b.acceptance),
        grad_evals=a.grad_evals + b.grad_evals,
        restored=a.restored + b.restored,
        gate_grad_evals=a.gate_grad_evals + b.gate_grad_evals,
    )


def pack_report(report: TrainingReport, *, restored: bool) -> jax.Array:
    """``TRAINING_STATS`` of ``report`` (and ``training_restored`` after them if asked)."""
    values = [report.steps, report.rollbacks, report.loss, report.acceptance,
              report.grad_evals, 0.0]  # training_time: the driver measures it
    if restored:
        values.append(report.restored)
    return pack_stats(*values)


def summary_report(summary: ensemble.TrainingSummary, grad_evals) -> TrainingReport:
    """One call of ``ensemble.train`` as a report, with the gradients it cost."""
    return TrainingReport(
        steps=summary.num_steps,
        rollbacks=summary.num_rejected,
        loss=summary.mean_loss,
        acceptance=summary.mean_monitor,
        grad_evals=grad_evals,
        restored=jnp.zeros((), jnp.int64),
        gate_grad_evals=jnp.zeros((), jnp.int64),
    )


def training_rounds(
    budget: int, hmc_warmup: int, num_tune: int | None, max_rounds: int = MAX_ROUNDS
) -> tuple[int, frozenset[int]]:
    """(optimiser steps per round, warm-up iterations after which a round runs).

    The first round follows the last HMC warm-up iteration; the others are spread evenly
    over the first ``TRAINING_END`` of the rest of warm-up. Rounds that do not fit are
    left to ``stop_tuning``.
    """
    if budget <= 0:
        return 0, frozenset()
    rounds = min(max_rounds, budget)
    per_round = math.ceil(budget / rounds)
    rounds = math.ceil(budget / per_round)
    horizon = DEFAULT_TUNE_HORIZON if num_tune is None else num_tune
    first = hmc_warmup - 1
    span = int(TRAINING_END * max(horizon - hmc_warmup, 0))
    at = {first + (k * span) // rounds for k in range(rounds)}
    return per_round, frozenset(i for i in at if num_tune is None or i < num_tune)


def hmc_code(own_codes, warmup_iteration, driver_code):
    """The window code of a learned method's HMC warm-up iteration: HMC's own schedule
    (``own_codes``, ``hmc_warmup`` long: the whitening training starts from), then the
    driver's, i.e. Stan's schedule of the whole warm-up (its later, longer windows and
    its terminal buffer), so that HMC ends warm-up tuned as ``JaxHMC`` would be. A window
    of the driver's that would end within ``adaptation.BASE_WINDOW`` iterations of the
    switch goes on collecting instead (too few draws for a variance)."""
    hmc_warmup = own_codes.shape[0]
    own = own_codes[jnp.minimum(warmup_iteration, hmc_warmup - 1)]
    early = (warmup_iteration - hmc_warmup < adaptation.BASE_WINDOW) & (
        driver_code == adaptation.SLOW_END
    )
    driver = jnp.where(early, adaptation.SLOW, driver_code)
    return jnp.where(warmup_iteration < hmc_warmup, own, driver).astype(own_codes.dtype)


def center_update(code, welford: adaptation.WelfordState, center_estimate, position):
    """The centre of the whitening after one HMC warm-up iteration: the mean over the same
    window as the mass matrix (collected in slow windows, taken at a window's end).
    Returns (welford, center)."""
    dim = position.shape[-1]
    collect = code >= adaptation.SLOW
    updated = adaptation.welford_update(welford, position)
    welford = jax.tree.map(lambda a, b: jnp.where(collect, a, b), updated, welford)
    window_end = code == adaptation.SLOW_END
    center = jnp.where(window_end, welford.mean, center_estimate)
    welford = jax.tree.map(
        lambda a, b: jnp.where(window_end, a, b), adaptation.welford_init(dim), welford
    )
    return welford, center


def hmc_warmup_iteration(hmc_part: ChainProgram, hmc_codes, num_walkers: int, key, carry,
                         extras, tuning: bool, driver_code=adaptation.FAST):
    """One true-gradient HMC iteration of a learned method's chain (carry fields ``hmc``,
    ``warmup_iteration``, ``center_welford``, ``center_estimate``, ``recent``): of the
    warm-up when ``tuning`` (adapting on ``hmc_code``'s schedule, collecting the
    whitening's centre and the last ``num_walkers`` positions, the first walkers), else of
    HMC at its current settings (a chain never warmed up). Returns (carry, position,
    HMC's stats)."""
    if not tuning:
        hmc_carry, position, stats = hmc_part.draw(key, carry.hmc, extras)
        return carry._replace(hmc=hmc_carry), position, stats
    code = hmc_code(hmc_codes, carry.warmup_iteration, driver_code)
    hmc_carry, position, stats = hmc_part.tune(key, carry.hmc, code, extras)
    welford, center = center_update(code, carry.center_welford, carry.center_estimate, position)
    carry = carry._replace(
        hmc=hmc_carry,
        warmup_iteration=carry.warmup_iteration + 1,
        center_welford=welford,
        center_estimate=center,
        recent=carry.recent.at[carry.warmup_iteration % num_walkers].set(position),
    )
    return carry, position, stats


def mixture_moments(centers, inverse_masses, step_sizes):
    """One whitening for all chains: the mean and variance of the mixture of the chains'
    estimates (centres (c, d), diagonal inverse masses (c, d)), and the geometric mean of
    their step sizes."""
    center = jnp.mean(centers, axis=0)
    inverse_mass = jnp.mean(inverse_masses + (centers - center) ** 2, axis=0)
    step_size = jnp.exp(jnp.mean(jnp.log(step_sizes)))
    return center, inverse_mass, step_size


def walkers_per_chain(num_walkers: int, chains: int) -> int:
    """Each chain's share of a pooled ensemble of about ``num_walkers``."""
    return max(1, -(-num_walkers // chains))


def gather_ensemble(batched: ensemble.TrainingState, k: int) -> ensemble.TrainingState:
    """The shared training state of a pooled run: chain 0's (every chain holds the same
    networks and optimiser) with the first ``k`` walkers of every chain as its ensemble."""
    chains, _, dim = batched.walkers.shape
    shared = jax.tree.map(lambda a: a[0], batched)
    return shared._replace(walkers=batched.walkers[:, :k].reshape(chains * k, dim))


def scatter_ensemble(
    batched: ensemble.TrainingState, shared: ensemble.TrainingState, k: int
) -> ensemble.TrainingState:
    """The inverse of ``gather_ensemble`` after a round: every chain gets the shared
    networks, optimiser and context, its own share of the walkers back, its own extras."""
    chains, _, dim = batched.walkers.shape
    walkers = batched.walkers.at[:, :k].set(shared.walkers.reshape(chains, k, dim))
    training = _broadcast(shared._replace(walkers=jnp.zeros(())), chains)
    context = training.context._replace(extras=batched.context.extras)
    return training._replace(walkers=walkers, context=context)


def _broadcast(tree, chains: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (chains, *jnp.shape(a))), tree)


class LearnedMethod(NamedTuple):
    """What a learned method supplies to ``learned_program`` (pure JAX functions of one
    chain's carry unless said otherwise).

    The carry must have the fields ``hmc`` (``programs.hmc.HMCCarry``), ``warmup_iteration``,
    ``training`` (``ensemble.TrainingState``, its context with the ``extras``), ``key`` (raw
    key data of the training randomness), ``started`` (bool: training has started),
    ``gate`` (``programs.gate.Gate``) and ``report``.

    ``hmc_iteration(key, carry, extras, tuning, code) -> (carry, position, stats)``: one HMC
    iteration, adapting when ``tuning`` (static), with the kernel's stats before training's;
    ``code`` is the driver's window code, which the chain's HMC follows once its own
    ``hmc_warmup``-long schedule is over (``hmc_code``).
    ``learned_iteration(key, carry, extras) -> (carry, position, stats)``: one transition
    of the learned kernel. ``start_chain(key, carry)`` / ``pooled_start(key, batched)``:
    fix the whitening and start training (one chain / all chains at once). ``run_round(
    key_data, training, state, walkers_per_chain) -> (training, state, report)``: one
    training round; ``state`` is what the method carries beside the training state (read
    and written by ``round_state`` / ``with_round_state``; () when nothing).
    """

    init: Callable
    refresh: Callable
    hmc_iteration: Callable
    learned_iteration: Callable
    start_chain: Callable
    pooled_start: Callable
    run_round: Callable
    report_restored: bool = False  # pack ``training_restored`` after TRAINING_STATS
    round_state: Callable[[Any], Any] = lambda carry: ()
    with_round_state: Callable[[Any, Any], Any] = lambda carry, state: carry


# How a draw of several transitions (``repeat_transitions``) reports a kernel stat: counts
# of work add up, a flag is set if any transition set it, the acceptance is averaged; any
# other stat is the last transition's.
SUMMED_STATS = frozenset({"n_grad_evals", "n_logp_evals"})
ANY_STATS = frozenset({"diverging", "nonfinite_reverse"})
MEAN_STATS = frozenset({"acceptance_rate"})
# Separates the keys of a draw's later transitions from its first's (``repeat_transitions``).
REPEAT_SALT = 0x4E9A7


def repeat_transitions(iteration, names: tuple[str, ...], key, carry, extras, transitions):
    """``transitions`` (≥ 1, traced) runs of ``iteration(key, carry, extras) -> (carry,
    position, stats)`` as one draw; ``names`` are the stats' names, which say how each is
    combined (``SUMMED_STATS``, ``ANY_STATS``, ``MEAN_STATS``, else the last). The first
    transition uses ``key`` itself, so one transition per draw is the single iteration."""
    # Transition i >= 1 draws from fold_in(fold_in(key, REPEAT_SALT), i), never from
    # fold_in(key, i): JAX's partitionable threefry makes fold_in(key, i) equal to
    # split(key)[i], the very keys the first transition splits ``key`` into, and reusing
    # them (the same momentum, the same uniform) biases the chain.
    repeat_key = jax.random.fold_in(key, REPEAT_SALT)
    mean = np.array([n in MEAN_STATS for n in names])
    added = np.array([n in SUMMED_STATS for n in names]) | mean  # a mean: added, then divided
    flags = np.array([n in ANY_STATS for n in names])

    def body(i, state):
        c, _, total = state
        c, position, stats = iteration(jax.random.fold_in(repeat_key, i), c, extras)
        total = jnp.where(added, total + stats, jnp.where(flags, jnp.maximum(total, stats), stats))
        return c, position, total

    first = iteration(key, carry, extras)
    carry, position, total = jax.lax.fori_loop(1, transitions, body, first)
    return carry, position, jnp.where(mean, total / transitions, total)


# Separates the gate's randomness from training's (both derive from the carry's key).
GATE_SALT = 0x6A7E


def gate_at_end(method: LearnedMethod, carry, walkers: int):
    """Batched ``carry`` (chains sharing one decision) at the end of warm-up: the gate
    decides, once, whether the learned kernel draws (``programs/gate.py``), against HMC
    at the settings warm-up ended with, i.e. as tuned as ``JaxHMC`` would be; the pilots'
    gradients are reported in ``gate_grad_evals``. Chains that never trained, and
    kernels loaded already decided, are left as they are."""

    def run(c):
        key = jax.random.fold_in(jax.random.wrap_key_data(c.key[0]), GATE_SALT)
        gate, spent = gates.gate_chains(method, key, c, walkers)
        chains = c.started.shape[0]
        report = c.report._replace(gate_grad_evals=c.report.gate_grad_evals + spent)
        return c._replace(gate=_broadcast(gate, chains), report=report)

    owed = carry.started[0] & ~carry.gate.decided[0]
    return jax.lax.cond(owed, run, lambda c: c, carry)


def end_chain(method: LearnedMethod, num_walkers: int, carry):
    """``ChainProgram.end_tune``: the gate on one chain's walkers, then HMC frozen at
    warm-up's final settings (for a chain the gate sends back, or one never trained)."""
    batched = jax.tree.map(lambda a: a[None], carry)
    batched = gate_at_end(method, batched, min(gates.PILOT_WALKERS, num_walkers))
    carry = jax.tree.map(lambda a: a[0], batched)
    return carry._replace(hmc=hmc_programs.freeze(carry.hmc))


def end_pooled(method: LearnedMethod, num_walkers: int, carry):
    """``ChainProgram.pooled_end_tune``: one gate for all chains (batched carry), on the
    first walkers of every chain together, then every chain's HMC frozen."""
    chains = carry.started.shape[0]
    walkers = min(walkers_per_chain(gates.PILOT_WALKERS, chains),
                  walkers_per_chain(num_walkers, chains))
    carry = gate_at_end(method, carry, walkers)
    return carry._replace(hmc=jax.vmap(hmc_programs.freeze)(carry.hmc))


def train_chain(method: LearnedMethod, num_walkers: int, key, carry):
    """``ChainProgram.train``: one training round on one chain's own walkers. The first
    round starts training (with this key, kept for every later round, so that the
    randomness of step i does not depend on how the budget is split)."""
    carry = jax.lax.cond(carry.started, lambda c: c, lambda c: method.start_chain(key, c), carry)
    training, state, report = method.run_round(
        carry.key, carry.training, method.round_state(carry), num_walkers
    )
    carry = method.with_round_state(carry, state)
    return carry._replace(training=training, report=add_reports(carry.report, report))


def train_pooled(method: LearnedMethod, num_walkers: int, key, carry):
    """``ChainProgram.pooled_train``: one round for all chains (batched carry) on one
    shared ensemble of about ``num_walkers``, the first k walkers of every chain."""
    chains = carry.started.shape[0]
    carry = jax.lax.cond(
        carry.started[0], lambda c: c, lambda c: method.pooled_start(key, c), carry
    )
    k = walkers_per_chain(num_walkers, chains)
    shared = gather_ensemble(carry.training, k)
    state = jax.tree.map(lambda a: a[0], method.round_state(carry))
    shared, state, report = method.run_round(carry.key[0], shared, state, k)
    carry = method.with_round_state(carry, _broadcast(state, chains))
    reports = jax.vmap(add_reports, (0, None))(carry.report, report)
    return carry._replace(training=scatter_ensemble(carry.training, shared, k), report=reports)


def training_pending(train_steps: int, carry) -> bool:
    """``ChainProgram.train_pending`` (host side, one chain or all): warm-up ended before
    the budget was spent (or even before training started); the drivers then train until
    it is. A chain that never ran its HMC warm-up (tune=0) has nothing to train on."""
    warmed = np.asarray(carry.warmup_iteration) > 0
    started = np.asarray(carry.started)
    done = np.asarray(carry.training.num_steps)
    return bool(warmed.any() and ((~started).any() or (done < train_steps).any()))


def learned_program(
    method: LearnedMethod,
    *,
    learned_mode: str,
    train_steps: int,
    hmc_warmup: int,
    num_walkers: int,
    stat_specs: tuple[StatSpec, ...],
    trained: bool,
) -> ChainProgram:
    """The ``ChainProgram`` of a learned method: HMC warm-up, rounds of training, frozen.

    ``trained``: the carry starts with a trained kernel; nothing is learned (the program
    has no ``train``). A chain whose warm-up never ran (``tune=0``) is not trained either:
    it samples with HMC at its initial settings. ``stat_specs``: the method's, without
    ``GATE_STATS``, which are appended here.
    """
    _, round_ends = training_rounds(train_steps, hmc_warmup, None)
    kernel_names = tuple(spec.name for spec in stat_specs[:_first_training_stat(stat_specs)])

    def iterate(key, carry, extras, mode, tuning, code=adaptation.FAST):
        gate = carry.gate
        transitions = jnp.ones((), jnp.int64)
        if mode == HMC_MODE:
            new_carry, position, stats = method.hmc_iteration(key, carry, extras, tuning, code)
        elif tuning:
            # Learned mode in warm-up: only a loaded kernel's (decided from the start), one
            # transition an iteration: warm-up iterations are not kept.
            new_carry, position, stats = method.learned_iteration(key, carry, extras)
        else:
            transitions = gate.transitions
            new_carry, position, stats = repeat_transitions(
                method.learned_iteration, kernel_names, key, carry, extras, transitions
            )
        stats = jnp.concatenate([
            stats,
            pack_report(carry.report, restored=method.report_restored),
            pack_stats(gate.learned_score, gate.hmc_score, mode != HMC_MODE,
                       carry.report.gate_grad_evals, transitions),
        ])
        return new_carry._replace(report=empty_report()), position, stats

    def tune(key, carry, code, extras, mode=HMC_MODE):
        return iterate(key, carry, extras, mode, True, code)

    def draw(key, carry, extras, mode=learned_mode):
        # HMC mode here only for a chain that was never warmed up (tune=0).
        return iterate(key, carry, extras, mode, False)

    def train_at(iteration, num_tune):
        if num_tune is None:
            return iteration in round_ends
        return iteration in training_rounds(train_steps, hmc_warmup, num_tune)[1]

    def mode_of(carry):
        # Until the gate has decided (when warm-up ends), the chain runs (and tunes) HMC;
        # training moves only the walkers. A loaded kernel is decided from the start.
        learned = (np.asarray(carry.started).all() and np.asarray(carry.gate.decided).all()
                   and np.asarray(carry.gate.use_learned).all())
        return learned_mode if learned else HMC_MODE

    common = dict(
        init=method.init,
        tune=tune,
        end_tune=partial(end_chain, method, num_walkers),
        pooled_end_tune=partial(end_pooled, method, num_walkers),
        draw=draw,
        refresh=method.refresh,
        stat_specs=stat_specs + gates.GATE_STATS,
        mode_of=mode_of,
    )
    if trained:
        return ChainProgram(**common)
    return ChainProgram(
        **common,
        train=partial(train_chain, method, num_walkers),
        pooled_train=partial(train_pooled, method, num_walkers),
        train_at=train_at,
        train_pending=partial(training_pending, train_steps),
    )


def _first_training_stat(stat_specs) -> int:
    """Where the training stats begin in a method's specs (the kernel's come before)."""
    names = [spec.name for spec in stat_specs]
    first = TRAINING_STATS[0].name
    return names.index(first) if first in names else len(names)


def refresh_training(carry, hmc_refresh, position, extras):
    """``ChainProgram.refresh`` of a learned method: the HMC part re-reads the position,
    and the training context takes the new values of the other variables."""
    hmc_carry = hmc_refresh(carry.hmc, position, extras)
    training = carry.training
    if extras:
        training = training._replace(context=training.context._replace(extras=tuple(extras)))
    return carry._replace(hmc=hmc_carry, training=training)
