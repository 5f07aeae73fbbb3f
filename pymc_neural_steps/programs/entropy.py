"""EntropyFlowMC's warm-up program: HMC warm-up, entropy training of the flow, frozen flow.

Li, Chen & Sommer (2021): the kernel is ``kernels/entropy.py``'s gradient-informed
conditional flow x' = x + ε f(z₀; x) with both proposal densities tractable (§3.1-3.2),
trained to maximise E[min(0, log MH ratio) + β log|det ∂x'/∂z₀|] (eq. 5) on a
bootstrapped buffer of walkers (§3.3), β following an acceptance controller. The skeleton
(HMC warm-up, rounds of training, pooling over chains, freezing) is
``programs/learned.py``'s; this module holds what is the flow's own, each a function:

* the whitening the flow runs in: diagonal from the HMC warm-up, or dense from the
  moments of its whole slow phase (``whitening_from``, ``pooled_dense_moments``,
  ``dense_step_size``);
* the training recipe (``flow_objective``, ``advance_walkers``, ``adapt_beta``);
* one training round (``run_round``), with the *re-whitening* (dense only): during the
  first ``rewhiten_steps`` optimiser steps the walkers' positions are collected
  (``collect_pilot``), then the whitening is re-estimated from them and the networks
  restart under it (``rewhiten``), between optimiser steps and before any draw.

Measurements behind the defaults are in ``docs/design-notes.md`` (EntropyFlowMC).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, ensemble, whitening
from pymc_neural_steps.kernels import entropy, hmc
from pymc_neural_steps.programs import learned
from pymc_neural_steps.programs.base import COMMON_STATS, ChainProgram, StatSpec, pack_stats
from pymc_neural_steps.programs.gate import Gate, undecided
from pymc_neural_steps.programs.hmc import HMCCarry, hmc_program
from pymc_neural_steps.programs.learned import TrainingReport
from pymc_neural_steps.target import Target

__all__ = [
    "DEFAULT_TARGET_ACCEPTANCE",
    "ENTROPY_STATS",
    "FLOW_MODE",
    "EntropyCarry",
    "FlowContext",
    "dense_step_size",
    "entropy_program",
    "pooled_dense_moments",
    "resolve_dense_whitening",
    "rewhiten",
    "run_round",
]

FLOW_MODE = "flow"

# Mean acceptance the β controller holds during training (docs/design-notes.md).
DEFAULT_TARGET_ACCEPTANCE = 0.75

ENTROPY_STATS = (
    StatSpec("step_size", np.float64),  # HMC's leapfrog step, then the flow's ε (whitened)
    StatSpec("n_steps", np.int64),  # HMC's leapfrog steps, then the flow's coupling steps N
    StatSpec("n_logp_evals", np.int64),  # log densities without gradient (R variant: at x')
    StatSpec("log_q_forward", np.float64),  # log q(x'|x) of the proposal (model coordinates)
    StatSpec("log_q_reverse", np.float64),  # log q(x|x')
    # One-sample estimate of the proposal's entropy, ½d log(2πe) + log|det ∂x'/∂z₀|.
    StatSpec("proposal_entropy", np.float64),
    StatSpec("beta", np.float64),  # the entropy weight β of the objective (NaN before training)
    StatSpec("nonfinite_reverse", bool),  # q(x|x') was not finite: the proposal was rejected
) + learned.TRAINING_STATS

# "auto" whitens densely up to this dimension. A dense S costs O(d²) per map (two
# triangular products per transition, against the networks' O(d·width)) and its estimate
# needs many more warm-up points than d; both are comfortable below ~100.
DENSE_WHITENING_MAX_DIM = 100
# Optimiser steps between two looks at the walkers while the pilot collects them.
REWHITEN_CHUNK = 10


def resolve_dense_whitening(option, dim: int) -> bool:
    if option == "auto":
        return dim <= DENSE_WHITENING_MAX_DIM
    if isinstance(option, (bool, np.bool_)):
        return bool(option)
    raise ValueError(f"dense_whitening must be 'auto', True or False, got {option!r}")


class FlowContext(NamedTuple):
    """What training carries besides the networks: the preconditioner, β, the extras.

    ``inverse_mass`` is the covariance estimate Σ: variances (d,) for a diagonal
    whitening, a (d, d) matrix for a dense one; ``scale`` is its factor S (√Σ or
    cholesky(Σ)), computed once when the whitening is fixed.
    """

    center: jax.Array
    inverse_mass: jax.Array
    scale: jax.Array
    beta: jax.Array
    extras: tuple  # values of the model's other variables (compound steps)
    # Re-whitening pilot: (count, Σ(w − c), Σ(w − c)(w − c)ᵀ) of the walkers' positions
    # so far, carried across training rounds; zero-size placeholders when not dense.
    pilot: tuple = ()


class EntropyCarry(NamedTuple):
    hmc: HMCCarry  # the chain's state and the HMC warm-up's adaptation
    warmup_iteration: jax.Array
    center_welford: adaptation.WelfordState
    center_estimate: jax.Array
    # Dense whitening: running moments of the HMC warm-up's whole slow phase, with the
    # (d, d) co-moment; zero-size placeholders for the diagonal whitening.
    cov_welford: adaptation.WelfordState
    recent: jax.Array  # (num_walkers, d): the last HMC warm-up positions, the first walkers
    training: ensemble.TrainingState  # params: FlowNetworks; context: FlowContext
    key: jax.Array  # raw key data of the training randomness, set when training starts
    started: jax.Array  # bool: the chain runs the flow kernel
    report: TrainingReport
    gate: Gate  # the flow kernel against HMC, once training is spent


def preconditioner(context: FlowContext) -> entropy.Preconditioner:
    return entropy.Preconditioner(context.center, context.scale)


def dense_step_size(step_size, diagonal_inverse_mass, covariance):
    """The flow's initial ε under the dense whitening, from HMC's step under the diagonal.

    HMC's step h is limited by the narrowest direction of the diagonally whitened target,
    of standard deviation √λ_min(D^{-1/2} Σ D^{-1/2}); the densely whitened target has all
    standard deviations near 1, so the same relative step is h / √λ_min. Clipped to
    [h, max(h, d^{-1/6})] (MALA's scaling for N(0, I)); training adapts ε from there.
    """
    dim = covariance.shape[-1]
    lam_min = whitening.smallest_correlation_eigenvalue(diagonal_inverse_mass, covariance)
    lam_min = jnp.maximum(lam_min, 1e-12)
    upper = jnp.maximum(step_size, dim ** (-1.0 / 6.0))
    return jnp.clip(step_size / jnp.sqrt(lam_min), step_size, upper)


def training_grads_per_walker(nets: entropy.FlowNetworks) -> int:
    """Forward true gradients of one objective evaluation at one walker.

    With R: the 2N of the forward flow and the 2N of the reverse (log p at x and x' come
    without gradient). Without R: ∇log p at x and at x'.
    """
    return entropy.grad_evals_per_transition(nets)[0] if nets.use_r else 2


def spread_order(num_walkers: int, k: int) -> np.ndarray:
    """A permutation of range(num_walkers) whose first k entries are evenly strided."""
    stride = max(1, num_walkers // k)
    return np.argsort(np.arange(num_walkers) % stride, kind="stable")


# --------------------------------------------------------------------------- settings


class EntropySettings(NamedTuple):
    """Everything static a chain's functions need: the options, resolved, and the parts
    built from them once (the HMC program, its schedule, the network template, trainer)."""

    dim: int
    num_walkers: int
    train_steps: int
    per_round: int
    pilot_steps: int  # re-whitening after this many optimiser steps (0: none)
    target_acceptance: float
    beta_rate: float
    beta0: float
    hmc_warmup: int
    first_slow: int  # the first HMC warm-up iteration of the slow windows
    dense: bool
    logdensity: Any  # (x, *extras) -> log p(x)
    hmc_part: ChainProgram
    hmc_codes: jax.Array
    template: entropy.FlowNetworks  # untrained networks (masks static, hidden weights fixed)
    trainer: ensemble.Trainer | None = None

    def logdensity_fn(self, extras):
        return lambda x: self.logdensity(x, *extras)

    @property
    def grads_per_walker(self) -> int:
        return training_grads_per_walker(self.template)


# --------------------------------------------------------------------------- training recipe


def flow_objective(settings: EntropySettings, nets, key, walkers, context: FlowContext):
    """The negated objective of eq. 5 on one proposal per walker."""
    return entropy.entropy_objective(
        nets, key, walkers, settings.logdensity_fn(context.extras), context.beta,
        preconditioner=preconditioner(context),
    )


def advance_walkers(key, nets, walkers, aux, context):
    """Accept the objective's proposals with their MH probability: they came from the
    current networks, so this is one exact transition of the current kernel per walker."""
    log_u = jnp.log(jax.random.uniform(key, walkers.shape[:1], walkers.dtype))
    accept = log_u < aux.log_ratio
    return jnp.where(accept[:, None], aux.proposal, walkers)


def adapt_beta(settings: EntropySettings, context: FlowContext, aux) -> FlowContext:
    """β's controller, log β += rate · (acceptance − target) (``entropy.beta_update``)."""
    beta = entropy.beta_update(
        context.beta, aux.mean_acceptance, settings.target_acceptance, settings.beta_rate
    )
    return context._replace(beta=beta)


def make_trainer(settings: EntropySettings, learning_rate, final_learning_rate):
    optimizer = ensemble.adam_with_decay(
        learning_rate, settings.train_steps, final_fraction=final_learning_rate / learning_rate
    )
    return ensemble.Trainer(
        partial(flow_objective, settings),
        advance_walkers,
        optimizer,
        adapt=partial(adapt_beta, settings),
        monitor=lambda aux: aux.mean_acceptance,
    )


def empty_pilot(settings: EntropySettings):
    n = settings.dim if settings.pilot_steps else 0
    return (jnp.zeros((), jnp.float64), jnp.zeros(n), jnp.zeros((n, n)))


def fresh_training(settings: EntropySettings, walkers, center, inverse_mass, step_size, extras):
    """The untrained flow (MALA with ε = ``step_size``) under the whitening (c, Σ)."""
    log_eps = jnp.log(jnp.asarray(step_size, settings.template.log_step_size.dtype))
    nets = eqx.tree_at(lambda n: n.log_step_size, settings.template, log_eps)
    scale = whitening.scale_from_inverse_mass(inverse_mass)
    beta = jnp.asarray(settings.beta0, jnp.float64)
    context = FlowContext(center, inverse_mass, scale, beta, extras, empty_pilot(settings))
    return ensemble.init(settings.trainer, nets, walkers, context)


# --------------------------------------------------------------------------- training rounds


def as_report(settings: EntropySettings, summary, walkers_per_chain) -> TrainingReport:
    grads = summary.num_steps * walkers_per_chain * settings.grads_per_walker
    return learned.summary_report(summary, grads)


def rewhiten(settings: EntropySettings, training, moments):
    """Re-estimate the dense whitening from the walkers' pilot positions; restart the
    networks (zero output: MALA) with ε rescaled to the new whitening. Called between
    optimiser steps, so every walker transition uses one fixed kernel. A failed estimate
    (non-finite, fewer than 2 points) leaves ``training`` as it was."""
    dim = settings.dim
    count, total, outer = moments
    context = training.context
    mean_dev = total / count
    cov = (outer - count * jnp.outer(mean_dev, mean_dev)) / jnp.maximum(count - 1.0, 1.0)
    cov = whitening.regularise_covariance(0.5 * (cov + cov.T), count)
    center = context.center + mean_dev
    scale = whitening.scale_from_inverse_mass(cov)
    # The new covariance seen through the old whitening: its smallest eigenvalue says
    # how much larger a step the new whitening affords (as in dense_step_size).
    old = context.scale
    seen = jax.scipy.linalg.solve_triangular(
        old, jax.scipy.linalg.solve_triangular(old, cov, lower=True).T, lower=True
    )
    lam_min = jnp.maximum(jnp.linalg.eigvalsh(0.5 * (seen + seen.T))[0], 1e-12)
    eps = training.params.step_size
    eps = jnp.clip(eps / jnp.sqrt(lam_min), eps, jnp.maximum(eps, dim ** (-1.0 / 6.0)))
    nets = eqx.tree_at(lambda n: n.log_step_size, settings.template, jnp.log(eps))
    context = context._replace(center=center, inverse_mass=cov, scale=scale)
    fresh = ensemble.init(settings.trainer, nets, training.walkers, context)
    ok = jnp.all(jnp.isfinite(scale)) & jnp.isfinite(eps) & (count >= 2)
    fresh = fresh._replace(
        num_steps=training.num_steps, num_rejected=training.num_rejected, loss=training.loss
    )
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), fresh, training)


def collect_pilot(moments, walkers, center, collect):
    """The pilot's sums (count, Σ(w − c), Σ(w − c)(w − c)ᵀ) with ``walkers`` added if
    ``collect``. The sums are relative to the centre, which changes only at re-whitening."""
    w = walkers - center
    new = (jnp.asarray(w.shape[0], jnp.float64), jnp.sum(w, 0), w.T @ w)
    return jax.tree.map(lambda m, n: jnp.where(collect, m + n, m), moments, new)


def run_round(settings: EntropySettings, key_data, training, state, walkers_per_chain):
    """One training round: up to ``per_round`` steps within the budget; with re-whitening,
    in chunks that feed the pilot. Returns (training, state (unchanged ()), report)."""
    steps = jnp.clip(settings.train_steps - training.num_steps, 0, settings.per_round)
    key = jax.random.wrap_key_data(key_data)
    if not settings.pilot_steps:
        training, summary = ensemble.train(settings.trainer, training, key, steps)
        return training, state, as_report(settings, summary, walkers_per_chain)
    training, report = _pilot_round(settings, key, training, steps, walkers_per_chain)
    return training, state, report


def _pilot_round(settings: EntropySettings, key, training, steps, walkers_per_chain):
    # Chunks of REWHITEN_CHUNK steps; until ``pilot_steps`` optimiser steps have run, the
    # walkers' positions after each chunk are collected, and at pilot_steps the whitening
    # is re-estimated from them (``rewhiten``). Chunking does not change the randomness
    # (ensemble.train keys steps by the running count).
    pilot_steps = settings.pilot_steps
    end = training.num_steps + steps

    def body(carry):
        training, report = carry
        k = jnp.minimum(REWHITEN_CHUNK, end - training.num_steps)
        to_pilot = pilot_steps - training.num_steps
        k = jnp.where(to_pilot > 0, jnp.minimum(k, to_pilot), k)
        training, summary = ensemble.train(settings.trainer, training, key, k)
        report = learned.add_reports(report, as_report(settings, summary, walkers_per_chain))
        moments = collect_pilot(
            training.context.pilot, training.walkers, training.context.center,
            training.num_steps <= pilot_steps,
        )
        training = training._replace(context=training.context._replace(pilot=moments))
        training = jax.lax.cond(
            training.num_steps == pilot_steps,
            partial(rewhiten, settings),
            lambda t, m: t,
            training,
            moments,
        )
        return training, report

    return jax.lax.while_loop(
        lambda c: c[0].num_steps < end, body, (training, learned.empty_report())
    )


# --------------------------------------------------------------------------- one chain


def init_carry(settings: EntropySettings, trained, position, extras) -> EntropyCarry:
    """A chain's first carry: HMC at ``position``, the untrained flow (or ``trained``'s)."""
    dim, num_walkers = settings.dim, settings.num_walkers
    hmc_carry = settings.hmc_part.init(position, extras)
    position = hmc_carry.state.position
    if trained is None:
        walkers = jnp.broadcast_to(position, (num_walkers, dim))
        unit = jnp.eye(dim) if settings.dense else jnp.ones(dim)
        training = fresh_training(settings, walkers, position, unit, 1.0, tuple(extras))
    else:
        context = FlowContext(
            jnp.asarray(trained.center),
            jnp.asarray(trained.inverse_mass),
            whitening.scale_from_inverse_mass(jnp.asarray(trained.inverse_mass)),
            jnp.asarray(trained.beta, jnp.float64),
            tuple(extras),
            empty_pilot(settings),
        )
        walkers = jnp.broadcast_to(context.center, (num_walkers, dim))
        training = ensemble.init(settings.trainer, settings.template, walkers, context)
    return EntropyCarry(
        hmc=hmc_carry,
        warmup_iteration=jnp.zeros((), jnp.int64),
        center_welford=adaptation.welford_init(dim),
        center_estimate=position,
        cov_welford=adaptation.welford_init(dim if settings.dense else 0, dense=True),
        recent=jnp.broadcast_to(position, (num_walkers, dim)),
        training=training,
        key=jax.random.key_data(jax.random.key(0)),
        started=jnp.asarray(trained is not None),
        report=learned.empty_report(),
        gate=undecided(trained),
    )


def _hmc_stats(stats):
    # COMMON_STATS, then HMC's step_size and n_steps (HMC_STATS[2:4]), the flow's NaN.
    nan = jnp.nan
    return jnp.concatenate([stats[:4], stats[6:8], pack_stats(0, nan, nan, nan, nan, False)])


def hmc_iteration(settings: EntropySettings, key, carry: EntropyCarry, extras, tuning: bool,
                  driver_code=adaptation.FAST):
    """One true-gradient HMC iteration (``learned.hmc_warmup_iteration``); a dense
    whitening also collects the positions' co-moments."""
    iteration = carry.warmup_iteration  # before this iteration
    new, position, stats = learned.hmc_warmup_iteration(
        settings.hmc_part, settings.hmc_codes, settings.num_walkers, key, carry, extras,
        tuning, driver_code,
    )
    if tuning and settings.dense:
        # From the first slow window to the end of the HMC warm-up (never reset): more
        # points for d² entries than the last window alone.
        updated = adaptation.welford_update(carry.cov_welford, position)
        collect = iteration >= settings.first_slow
        cov_welford = jax.tree.map(lambda a, b: jnp.where(collect, a, b), updated,
                                   carry.cov_welford)
        new = new._replace(cov_welford=cov_welford)
    return new, position, _hmc_stats(stats)


def flow_iteration(settings: EntropySettings, key, carry: EntropyCarry, extras):
    """One MH transition of the current flow kernel."""
    context = carry.training.context
    nets = carry.training.params
    kernel = entropy.build_kernel(settings.logdensity_fn(extras))
    s = carry.hmc.state
    state, info = kernel(
        key,
        entropy.EntropyState(s.position, s.logdensity, s.gradient),
        nets,
        preconditioner(context),
    )
    entropy_estimate = 0.5 * settings.dim * math.log(2 * math.pi * math.e) + info.log_det
    stats = pack_stats(
        info.acceptance_rate,
        info.nonfinite_proposal | info.nonfinite_reverse,
        state.logdensity,
        info.n_grad_evals + carry.hmc.refresh_evals,
        info.step_size,
        nets.num_coupling_steps,
        info.n_logp_evals,
        info.log_q_forward,
        info.log_q_reverse,
        entropy_estimate,
        context.beta,
        info.nonfinite_reverse,
    )
    hmc_state = hmc.HMCState(state.position, state.logdensity, state.logdensity_grad)
    hmc_carry = carry.hmc._replace(state=hmc_state, refresh_evals=jnp.zeros((), int))
    return carry._replace(hmc=hmc_carry), state.position, stats


# --------------------------------------------------------------------------- starting training


def chain_estimates(carry: EntropyCarry):
    """(centre, diagonal inverse mass, HMC step, dense moments (count, mean, cov))."""
    step_size, inverse_mass = adaptation.warmup_final(carry.hmc.warmup)
    moments = carry.cov_welford
    cov = adaptation.welford_covariance(moments)
    return carry.center_estimate, inverse_mass, step_size, (moments.count, moments.mean, cov)


def whitening_from(settings: EntropySettings, center, inverse_mass, step_size, count, cov):
    """The fixed whitening (centre, Σ) and the flow's initial ε."""
    if not settings.dense:
        return center, inverse_mass, step_size
    # Too few points (a warm-up without a slow phase): the diagonal estimate, densely.
    cov = jnp.where(
        count >= 2, whitening.regularise_covariance(cov, count), jnp.diag(inverse_mass)
    )
    return center, cov, dense_step_size(step_size, inverse_mass, cov)


def pooled_dense_moments(counts, means, covs):
    """(count, covariance) of all chains' slow-phase positions together, from each chain's
    count (c,), mean (c, d) and covariance (c, d, d): within plus between chains."""
    count = jnp.sum(counts)
    w = counts / jnp.maximum(count, 1.0)
    mean = jnp.sum(w[:, None] * means, axis=0)
    dev = means - mean
    norm = jnp.maximum(count - 1.0, 1.0)
    within = jnp.einsum("c,cij->ij", (counts - 1.0) / norm, covs)
    between = jnp.einsum("c,ci,cj->ij", counts / norm, dev, dev)
    return count, within + between


def start_chain(settings: EntropySettings, key, carry: EntropyCarry) -> EntropyCarry:
    """Fix this chain's whitening and start training from its last warm-up positions."""
    center, inverse_mass, step_size, (count, _, cov) = chain_estimates(carry)
    center, inverse_mass, step_size = whitening_from(
        settings, center, inverse_mass, step_size, count, cov
    )
    training = fresh_training(
        settings, carry.recent, center, inverse_mass, step_size, carry.training.context.extras
    )
    return carry._replace(
        training=training, key=jax.random.key_data(key), started=jnp.ones((), bool)
    )


def pooled_start(settings: EntropySettings, key, carry: EntropyCarry) -> EntropyCarry:
    """Fix one whitening for all chains (batched carry) and start training."""
    centers, inverse_masses, step_sizes, moments = jax.vmap(chain_estimates)(carry)
    center, inverse_mass, step_size = learned.mixture_moments(centers, inverse_masses, step_sizes)
    if settings.dense:
        count, cov = pooled_dense_moments(*moments)
        center, inverse_mass, step_size = whitening_from(
            settings, center, inverse_mass, step_size, count, cov
        )
    # The shared ensemble takes the first k walkers of each chain (``pooled_train``):
    # reorder each chain's recent positions so that those k are spread over its last
    # num_walkers HMC iterations rather than k consecutive, correlated ones.
    chains = carry.started.shape[0]
    k = learned.walkers_per_chain(settings.num_walkers, chains)
    walkers = carry.recent[:, spread_order(settings.num_walkers, k)]
    training = jax.vmap(
        lambda w, extras: fresh_training(settings, w, center, inverse_mass, step_size, extras)
    )(walkers, carry.training.context.extras)
    return carry._replace(
        training=training,
        key=jnp.broadcast_to(jax.random.key_data(key), carry.key.shape),
        started=jnp.ones_like(carry.started),
    )


# --------------------------------------------------------------------------- the program


def entropy_settings(
    target: Target,
    *,
    num_coupling_steps: int = 1,
    use_r: bool = False,
    num_walkers: int = 64,
    train_steps: int = 3000,
    learning_rate: float = 3e-3,
    final_learning_rate: float = 1e-3,
    target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE,
    beta_rate: float = entropy.DEFAULT_BETA_RATE,
    initial_beta: float | None = None,
    hmc_warmup: int = 200,
    width: int = 64,
    depth: int = 2,
    target_accept: float = 0.8,
    max_hmc_steps: int = 1024,
    dense_whitening="auto",
    rewhiten_steps: int = 300,
    step_size: float | None = None,
    trained=None,
) -> EntropySettings:
    """The options of ``entropy_program``, resolved for ``target`` (anything with ``dim``
    and ``logdensity(x, *extras)``), with the HMC program, network template and trainer."""
    dim = target.dim
    dense = resolve_dense_whitening(dense_whitening, dim)
    if trained is not None:
        dense = bool(np.ndim(trained.inverse_mass) == 2)
        train_steps = 0
        template = jax.tree.map(jnp.asarray, trained.networks)
    else:
        # Masks are static and the initial hidden weights fixed: built once, on the host.
        template = entropy.init_networks(
            jax.random.key(0), dim, num_coupling_steps, width, depth, step_size=1.0, use_r=use_r
        )
    codes = adaptation.window_codes(hmc_warmup)
    slow = np.flatnonzero(codes >= adaptation.SLOW)
    per_round, _ = learned.training_rounds(train_steps, hmc_warmup, None)
    # Re-whitening from the walkers (dense only, and only if training goes on after it).
    use_pilot = dense and trained is None and 0 < rewhiten_steps < train_steps
    settings = EntropySettings(
        dim=dim,
        num_walkers=num_walkers,
        train_steps=train_steps,
        per_round=per_round,
        pilot_steps=int(rewhiten_steps) if use_pilot else 0,
        target_acceptance=target_acceptance,
        beta_rate=beta_rate,
        beta0=1.0 / dim if initial_beta is None else float(initial_beta),
        hmc_warmup=hmc_warmup,
        first_slow=int(slow[0]) if slow.size else hmc_warmup,
        dense=dense,
        logdensity=target.logdensity,
        hmc_part=hmc_program(
            target, target_accept=target_accept, max_steps=max_hmc_steps, step_size=step_size
        ),
        hmc_codes=jnp.asarray(codes, jnp.int8),
        template=template,
    )
    return settings._replace(trainer=make_trainer(settings, learning_rate, final_learning_rate))


def entropy_program(target: Target, *, trained=None, **options) -> ChainProgram:
    """The ``ChainProgram`` of EntropyFlowMC on ``target``; ``options`` as
    ``entropy_settings``'s (``steps.entropy.EntropyFlowMC`` documents them; ``step_size``
    is the HMC warm-up's initial one).

    With ``trained`` (a ``TrainedEntropyFlow``) the chain runs that kernel from the first
    iteration: no HMC warm-up, no training, nothing adapted (warm-up iterations are
    ordinary transitions).
    """
    settings = entropy_settings(target, trained=trained, **options)
    method = learned.LearnedMethod(
        init=partial(init_carry, settings, trained),
        refresh=lambda carry, position, extras: learned.refresh_training(
            carry, settings.hmc_part.refresh, position, extras
        ),
        hmc_iteration=partial(hmc_iteration, settings),
        learned_iteration=partial(flow_iteration, settings),
        start_chain=partial(start_chain, settings),
        pooled_start=partial(pooled_start, settings),
        run_round=partial(run_round, settings),
    )
    return learned.learned_program(
        method,
        learned_mode=FLOW_MODE,
        train_steps=settings.train_steps,
        hmc_warmup=settings.hmc_warmup,
        num_walkers=settings.num_walkers,
        stat_specs=COMMON_STATS + ENTROPY_STATS,
        trained=trained is not None,
    )
