"""L2HMC's warm-up program: HMC warm-up, ESJD training on walkers, a frozen learned leapfrog.

Levy, Hoffman & Sohl-Dickstein (2018): the kernel is ``kernels/l2hmc.py``'s learned leapfrog
(§3), trained by the expected squared jumped distance on parallel chains plus a burn-in
term of fresh draws from the initial distribution (§3.2, eq. 8; §5). The skeleton (HMC
warm-up, rounds of training, pooling over chains, freezing) is ``programs/learned.py``'s;
this module holds what is L2HMC's own, each a function of its own:

* the whitening x = c + S y the networks run in: diagonal from the HMC warm-up, or dense
  from its second half's positions (``dense_estimates``, ``dense_step_size``);
* the training recipe (``esjd_objective``, ``advance_walkers``) and one training round
  (``run_round``) with its two guards: the end-of-budget return to the best kernel scored
  (``kernel_score``, ``keep_best``, ``restore_if_collapsed``) and the stability trim of ε
  (``stability_factor``);
* a step-size jitter ε · U[1 − j, 1 + j] in every transition (``jittered``), exact as a
  mixture of exact kernels.

Measurements behind the defaults are in ``docs/design-notes.md`` (L2HMC).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, ensemble
from pymc_neural_steps import whitening as wh
from pymc_neural_steps.kernels import hmc, l2hmc
from pymc_neural_steps.programs import learned
from pymc_neural_steps.programs.base import COMMON_STATS, ChainProgram, StatSpec, pack_stats
from pymc_neural_steps.programs.gate import Gate, undecided
from pymc_neural_steps.programs.hmc import HMC_STATS, HMCCarry, hmc_program
from pymc_neural_steps.programs.learned import TrainingReport
from pymc_neural_steps.target import Target

__all__ = [
    "L2HMC_MODE",
    "L2HMC_STATS",
    "BestKernel",
    "L2HMCCarry",
    "Whitening",
    "dense_estimates",
    "dense_step_size",
    "keep_best",
    "l2hmc_program",
    "run_round",
    "stability_factor",
    "use_dense_whitening",
]

L2HMC_MODE = "l2hmc"

# The end-of-budget guard (``restore_if_collapsed``): a final kernel whose ESJD on the
# walkers is below this fraction of the best seen at a round boundary is replaced by it.
BEST_FRACTION = 0.5
SCORE_SALT = 2**31 - 1  # separates the scorings' randomness from the training steps'
# The end-of-budget stability trim (``stability_factor``): the jitter factors probed, the
# acceptance probability below which a walker's proposal counts as a certain rejection,
# and the fraction of walkers with one above which a jittered step counts as unstable.
TRIM_GRID = 17
TRIM_REJECTED = 0.01
TRIM_MAX_REJECTED = 0.05
TRIM_SALT = 2**31 - 2
# dense_whitening="auto" whitens densely up to this dimension (docs/design-notes.md).
DENSE_MAX_DIM = 100
# The step size found by the diagonal HMC warm-up is rescaled for the dense whitening by at
# most this factor either way (see ``dense_step_size``).
MAX_STEP_RESCALE = 20.0
# Fewer kept warm-up positions than this (warm-up shorter than ``hmc_warmup``): the dense
# whitening falls back to the diagonal estimate (written as a matrix).
MIN_DENSE_POINTS = 10

L2HMC_STATS = (
    HMC_STATS
    + (
        # (step_size: the ε of this transition, jitter included; n_steps: T, or HMC's.)
        StatSpec("esjd", np.float64),  # A·‖x' − x‖² of the proposal (HMC: the realised jump)
        StatSpec("log_jacobian", np.float64),
    )
    + learned.TRAINING_STATS
    + (
        # 1 on the iteration after the end-of-budget guard replaced a collapsed final
        # kernel by the best one scored during training (see ``restore_if_collapsed``).
        StatSpec("training_restored", np.int64),
    )
)


def use_dense_whitening(option, dim: int) -> bool:
    """Whether ``dense_whitening`` (``"auto"``, True or False) means dense for ``dim``."""
    if option == "auto":
        return dim <= DENSE_MAX_DIM
    return bool(option)


def dense_step_size(step_size, diagonal_inverse_mass, covariance):
    """The warm-up's ε (tuned in y = (x − c)/√diag M⁻¹) carried over to the dense whitening.

    HMC's ε is limited by the narrowest direction of the target in the coordinates it runs
    in. Under the diagonal whitening that is σ_min = √λ_min(D^{-1/2} Σ D^{-1/2}) (D the
    diagonal M⁻¹); under the dense whitening with Σ itself it is 1. So ε / σ_min, the ratio
    clipped to [1/MAX_STEP_RESCALE, MAX_STEP_RESCALE]. Training adapts ε from there.
    """
    lam_min = wh.smallest_correlation_eigenvalue(diagonal_inverse_mass, covariance)
    smallest = jnp.sqrt(jnp.maximum(lam_min, 1e-300))
    ratio = jnp.clip(1.0 / smallest, 1.0 / MAX_STEP_RESCALE, MAX_STEP_RESCALE)
    return step_size * ratio


def dense_estimates(draws, filled, center, diagonal_inverse_mass, step_size):
    """The dense whitening (centre, covariance, ε) from the HMC warm-up's kept positions.

    ``draws`` (n, d) are the positions (pooled over chains in pooled mode), ``filled`` (n,)
    says which rows hold one. Too few (warm-up shorter than ``hmc_warmup``): the diagonal
    estimate, as a matrix, so the carry keeps its shapes.
    """
    enough = jnp.sum(filled) >= MIN_DENSE_POINTS
    weights = jnp.where(enough, filled, True).astype(draws.dtype)
    covariance = wh.dense_covariance(draws, weights)
    covariance = jnp.where(enough, covariance, jnp.diag(diagonal_inverse_mass))
    center = jnp.where(enough, weights @ draws / jnp.sum(weights), center)
    step_size = jnp.where(
        enough, dense_step_size(step_size, diagonal_inverse_mass, covariance), step_size
    )
    return center, covariance, step_size


def from_white_rows(noise, center, inverse_mass):
    """center + S y for every row y of ``noise`` (n, d)."""
    scale = wh.scale_from_inverse_mass(inverse_mass)
    if scale.ndim == 2:
        return center + noise @ scale.T
    return center + scale * noise


class Whitening(NamedTuple):
    """The fixed affine map x = center + S y, and the step's extra inputs.

    S = √inverse_mass (elementwise) for an ``inverse_mass`` of shape (d,), its Cholesky
    factor for one of shape (d, d) (``whitening.scale_from_inverse_mass``)."""

    center: jax.Array
    inverse_mass: jax.Array
    extras: tuple  # values of the model's other variables (compound steps)


class BestKernel(NamedTuple):
    """The networks that scored the highest ESJD at a round boundary, and that score."""

    params: l2hmc.L2HMCNetworks
    score: jax.Array  # mean A·‖y − y'‖² (whitened) over the walkers; −inf before scoring
    restored: jax.Array  # bool: the guard replaced the final kernel by this one


class L2HMCCarry(NamedTuple):
    hmc: HMCCarry  # the chain's state and the HMC warm-up's adaptation
    warmup_iteration: jax.Array  # HMC warm-up iterations done
    center_welford: adaptation.WelfordState  # posterior mean, window by window
    center_estimate: jax.Array  # mean of the last completed mass-matrix window
    # Dense whitening only: the HMC warm-up's positions of its second half, (n, d)
    # ((1, d) and unused otherwise), for the dense covariance estimate.
    warmup_draws: jax.Array
    training: ensemble.TrainingState  # params: L2HMCNetworks; context: Whitening
    key: jax.Array  # raw key data of the training randomness, set when training starts
    started: jax.Array  # bool: training has started (the chain runs the learned kernel)
    report: TrainingReport
    best: BestKernel
    gate: Gate  # the learned kernel against HMC, once training is spent


def step_scaled(nets: l2hmc.L2HMCNetworks, factor) -> l2hmc.L2HMCNetworks:
    """The networks with ε multiplied by ``factor``."""
    return eqx.tree_at(lambda n: n.log_step_size, nets, nets.log_step_size + jnp.log(factor))


def jittered(nets: l2hmc.L2HMCNetworks, key: jax.Array, jitter: float) -> l2hmc.L2HMCNetworks:
    """The networks with ε multiplied by u ~ U[1 − jitter, 1 + jitter] (an exact mixture)."""
    if jitter == 0:
        return nets
    u = jax.random.uniform(
        key, dtype=nets.log_step_size.dtype, minval=1.0 - jitter, maxval=1.0 + jitter
    )
    return step_scaled(nets, u)


# --------------------------------------------------------------------------- settings


class L2HMCSettings(NamedTuple):
    """Everything static a chain's functions need: the options, resolved, and the parts
    built from them once (the HMC program, its warm-up schedule, the trainer)."""

    dim: int
    num_steps: int
    num_walkers: int
    train_steps: int
    per_round: int
    scale: float
    burnin_weight: float
    burnin_scale: float
    jitter: float
    hmc_warmup: int
    width: int
    depth: int
    dense: bool
    num_kept: int  # dense: the warm-up positions kept (the second half), else 1
    logdensity: Any  # (x, *extras) -> log p(x)
    hmc_part: ChainProgram
    hmc_codes: jax.Array
    trainer: ensemble.Trainer | None = None

    def logdensity_fn(self, extras):
        return lambda x: self.logdensity(x, *extras)

    @property
    def first_kept(self) -> int:
        return self.hmc_warmup - self.num_kept

    @property
    def grads_per_start(self) -> int:
        # Forward gradient evaluations per start point per loss: one at the start
        # (esjd_loss recomputes it) and one per learned leapfrog step; the reverse pass is
        # not counted.
        return self.num_steps + 1


# --------------------------------------------------------------------------- training recipe


def esjd_objective(settings: L2HMCSettings, nets, key, walkers, whitening: Whitening):
    """The paper's loss (eq. 8) on the walkers plus as many burn-in draws from
    N(c, σ_b² S Sᵀ), with a jittered ε."""
    key_loss, key_burnin, key_jitter = jax.random.split(key, 3)
    noise = settings.burnin_scale * jax.random.normal(key_burnin, walkers.shape, walkers.dtype)
    burnin = from_white_rows(noise, whitening.center, whitening.inverse_mass)
    return l2hmc.esjd_loss(
        jittered(nets, key_jitter, settings.jitter),
        key_loss,
        walkers,
        burnin,
        settings.logdensity_fn(whitening.extras),
        scale=settings.scale,
        burnin_weight=settings.burnin_weight,
        inverse_mass=whitening.inverse_mass,
        center=whitening.center,
    )


def advance_walkers(key, nets, walkers, aux, whitening):
    """Accept the loss's proposals with their MH probability: they came from the current
    networks, so this is one exact transition of the current kernel for every walker."""
    log_u = jnp.log(jax.random.uniform(key, walkers.shape[:1], walkers.dtype))
    accept = log_u < aux.log_accept_ratio
    return jnp.where(accept[:, None], aux.proposal.position, walkers)


def make_trainer(settings: L2HMCSettings, learning_rate, final_learning_rate) -> ensemble.Trainer:
    optimizer = ensemble.adam_with_decay(
        learning_rate, settings.train_steps, final_fraction=final_learning_rate / learning_rate
    )
    return ensemble.Trainer(
        partial(esjd_objective, settings),
        advance_walkers,
        optimizer,
        monitor=lambda aux: aux.acceptance_rate,
    )


def fresh_training(settings: L2HMCSettings, key, walker_key, center, inverse_mass, step_size,
                   extras) -> ensemble.TrainingState:
    """Untrained networks (HMC with ε = ``step_size``) and walkers drawn from N(c, S Sᵀ)."""
    nets = l2hmc.init_networks(
        key, settings.dim, settings.num_steps, settings.width, settings.depth, step_size=1.0
    )
    log_eps = jnp.log(jnp.asarray(step_size, nets.log_step_size.dtype))
    nets = eqx.tree_at(lambda n: n.log_step_size, nets, log_eps)
    noise = jax.random.normal(walker_key, (settings.num_walkers, settings.dim), jnp.float64)
    walkers = from_white_rows(noise, center, inverse_mass)
    return ensemble.init(settings.trainer, nets, walkers, Whitening(center, inverse_mass, extras))


# --------------------------------------------------------------------------- guards


def kernel_score(key, nets, walkers, logdensity_fn, whitening: Whitening, scale=1.0):
    """ESJD of the un-jittered kernel on the walkers (whitened units), from one batch of
    proposals (non-finite: 0): what the end-of-budget guard compares."""
    _, aux = l2hmc.esjd_loss(
        nets, key, walkers, None, logdensity_fn,
        scale=scale, inverse_mass=whitening.inverse_mass, center=whitening.center,
    )
    return jnp.where(jnp.isfinite(aux.esjd_whitened), aux.esjd_whitened, 0.0)


def unscored(params) -> BestKernel:
    return BestKernel(params, jnp.full((), -jnp.inf, jnp.float64), jnp.zeros((), bool))


def keep_best(best: BestKernel, params, score) -> BestKernel:
    """``best`` or, if ``score`` beats its score, ``params`` with that score."""
    better = score > best.score
    return BestKernel(
        jax.tree.map(lambda a, b: jnp.where(better, a, b), params, best.params),
        jnp.where(better, score, best.score),
        best.restored,
    )


def restore_if_collapsed(training, best: BestKernel, score, train_steps: int):
    """When the budget is spent, a final kernel scoring under BEST_FRACTION of the best
    score seen is replaced by the best kernel: the ESJD loss can step over a cliff where
    every proposal is rejected, its gradient is then exactly zero, and training never comes
    back (seen on the 20-d rotated Gaussian: walker acceptance ~0.1, the chain stuck).
    Returns (training, best, collapsed)."""
    collapsed = (training.num_steps >= train_steps) & (score < BEST_FRACTION * best.score)
    params = jax.tree.map(lambda a, b: jnp.where(collapsed, a, b), best.params, training.params)
    return (
        training._replace(params=params),
        best._replace(restored=best.restored | collapsed),
        collapsed,
    )


def stability_factor(key, nets, walkers, logdensity_fn, whitening: Whitening, *, jitter,
                     scale=1.0):
    """The factor for ε that keeps the whole jitter range stable on the walkers.

    The jitter multiplies ε by up to 1 + j; ESJD training can leave ε where the top of
    that range is beyond the leapfrog's stability limit in the narrowest direction,
    and those transitions are all rejected and flagged divergent (20-d rotated
    Gaussian, seed 1: 41 % of draws, every one with ε above 1.16× the trained ε).
    Each of ``TRIM_GRID`` factors u in [1 − j, 1 + j] is tried on every walker; if at
    some u more than ``TRIM_MAX_REJECTED`` of the walkers propose a move accepted with
    probability below ``TRIM_REJECTED`` (a near-certain rejection: a divergence, or a
    region where the step is unstable, as in a banana's curved tails), ε is scaled so
    that 1 + j lands on the largest u below the first such one (on the lowest u if even
    that one fails). Costs TRIM_GRID × walkers × (T + 1) gradients.
    """
    grid = jnp.linspace(1.0 - jitter, 1.0 + jitter, TRIM_GRID)

    def rejected(u, k):
        _, aux = l2hmc.esjd_loss(
            step_scaled(nets, u), k, walkers, None, logdensity_fn,
            scale=scale, inverse_mass=whitening.inverse_mass, center=whitening.center,
        )
        log_ratio = jnp.nan_to_num(aux.log_accept_ratio, nan=-jnp.inf)
        return jnp.mean(log_ratio < jnp.log(TRIM_REJECTED))

    rates = jax.vmap(rejected)(grid, jax.random.split(key, TRIM_GRID))
    failing = rates > TRIM_MAX_REJECTED
    first_fail = jnp.argmax(failing)
    last_good = grid[jnp.maximum(first_fail - 1, 0)]
    return jnp.where(jnp.any(failing), last_good / (1.0 + jitter), 1.0)


def trim_step_size(settings: L2HMCSettings, key, training, finished, walkers_per_chain):
    """The stability trim, run only in the round that spends the budget (``finished``):
    (training with ε scaled by ``stability_factor``, this chain's share of its gradients)."""
    if settings.jitter == 0:
        return training, 0

    def probe(training):
        return jnp.asarray(
            stability_factor(
                jax.random.fold_in(key, TRIM_SALT), training.params, training.walkers,
                settings.logdensity_fn(training.context.extras), training.context,
                jitter=settings.jitter, scale=settings.scale,
            ),
            jnp.float64,
        )

    factor = jax.lax.cond(finished, probe, lambda t: jnp.ones((), jnp.float64), training)
    training = training._replace(params=step_scaled(training.params, factor))
    grads = jnp.where(finished, TRIM_GRID * walkers_per_chain * settings.grads_per_start, 0)
    return training, grads


def run_round(settings: L2HMCSettings, key_data, training, best: BestKernel, walkers_per_chain):
    """One training round: up to ``per_round`` steps within the budget, the kernel scored
    (ESJD on the walkers) before and after; at the end of the budget the two guards
    (``restore_if_collapsed``, ``trim_step_size``). Returns (training, best, report)."""
    steps = jnp.clip(settings.train_steps - training.num_steps, 0, settings.per_round)
    key = jax.random.wrap_key_data(key_data)
    score_key = jax.random.fold_in(key, SCORE_SALT)

    def score(i, training):
        return kernel_score(
            jax.random.fold_in(score_key, i), training.params, training.walkers,
            settings.logdensity_fn(training.context.extras), training.context,
            scale=settings.scale,
        )

    best = keep_best(best, training.params, score(2 * training.num_steps, training))
    training, summary = ensemble.train(settings.trainer, training, key, steps)
    after = score(2 * training.num_steps + 1, training)
    best = keep_best(best, training.params, after)
    training, best, collapsed = restore_if_collapsed(training, best, after, settings.train_steps)
    finished = (steps > 0) & (training.num_steps >= settings.train_steps)
    training, trim_grads = trim_step_size(settings, key, training, finished, walkers_per_chain)
    # This chain's share: its walkers and as many burn-in draws per step, its walkers in
    # the two scorings, and the stability trim's probes.
    per_pass = walkers_per_chain * settings.grads_per_start
    grads = (summary.num_steps + 1) * 2 * per_pass + trim_grads
    report = learned.summary_report(summary, grads)._replace(
        restored=collapsed.astype(jnp.int64)
    )
    return training, best, report


# --------------------------------------------------------------------------- one chain


def init_carry(settings: L2HMCSettings, trained, position, extras) -> L2HMCCarry:
    """A chain's first carry: HMC at ``position``, untrained networks (or ``trained``'s)."""
    dim = settings.dim
    hmc_carry = settings.hmc_part.init(position, extras)
    position = hmc_carry.state.position
    if trained is None:
        identity = jnp.eye(dim) if settings.dense else jnp.ones(dim)
        training = fresh_training(
            settings, jax.random.key(0), jax.random.key(1), position, identity, 1.0,
            tuple(extras),
        )
    else:
        nets = jax.tree.map(jnp.asarray, trained.networks)
        whitening = Whitening(
            jnp.asarray(trained.center), jnp.asarray(trained.inverse_mass), tuple(extras)
        )
        walkers = jnp.broadcast_to(whitening.center, (settings.num_walkers, dim))
        training = ensemble.init(settings.trainer, nets, walkers, whitening)
    return L2HMCCarry(
        hmc=hmc_carry,
        warmup_iteration=jnp.zeros((), jnp.int64),
        center_welford=adaptation.welford_init(dim),
        center_estimate=position,
        warmup_draws=jnp.zeros((settings.num_kept, dim), position.dtype),
        training=training,
        key=jax.random.key_data(jax.random.key(0)),
        started=jnp.asarray(trained is not None),
        report=learned.empty_report(),
        best=unscored(training.params),
        gate=undecided(trained),
    )


def hmc_iteration(settings: L2HMCSettings, key, carry: L2HMCCarry, extras, tuning: bool,
                  driver_code=adaptation.FAST):
    """One true-gradient HMC iteration: of the warm-up (adapting, collecting the whitening's
    estimates) when ``tuning``, else of HMC at its current settings (a chain never warmed up)."""
    start = carry.hmc.state.position
    if not tuning:
        hmc_carry, position, stats = settings.hmc_part.draw(key, carry.hmc, extras)
        jump = jnp.sum((position - start) ** 2)
        return carry._replace(hmc=hmc_carry), position, jnp.concatenate(
            [stats, pack_stats(jump, 0.0)]
        )
    code = learned.hmc_code(settings.hmc_codes, carry.warmup_iteration, driver_code)
    hmc_carry, position, stats = settings.hmc_part.tune(key, carry.hmc, code, extras)
    welford, center = learned.center_update(
        code, carry.center_welford, carry.center_estimate, position
    )
    kept = carry.warmup_draws
    if settings.dense:
        slot = carry.warmup_iteration - settings.first_kept
        kept = jnp.where(
            slot >= 0,
            kept.at[jnp.clip(slot, 0, settings.num_kept - 1)].set(position),
            kept,
        )
    carry = carry._replace(
        hmc=hmc_carry,
        warmup_iteration=carry.warmup_iteration + 1,
        center_welford=welford,
        center_estimate=center,
        warmup_draws=kept,
    )
    jump = jnp.sum((position - start) ** 2)
    return carry, position, jnp.concatenate([stats, pack_stats(jump, 0.0)])


def l2hmc_iteration(settings: L2HMCSettings, key, carry: L2HMCCarry, extras):
    """One transition of the current learned kernel, with a jittered ε."""
    key_jitter, key_kernel = jax.random.split(key)
    whitening = carry.training.context
    nets = jittered(carry.training.params, key_jitter, settings.jitter)
    kernel = l2hmc.build_kernel(settings.logdensity_fn(extras))
    s = carry.hmc.state
    state, info = kernel(
        key_kernel,
        l2hmc.L2HMCState(s.position, s.logdensity, s.gradient),
        nets,
        whitening.inverse_mass,
        whitening.center,
    )
    hmc_state = hmc.HMCState(state.position, state.logdensity, state.logdensity_grad)
    stats = pack_stats(
        info.acceptance_rate,
        info.is_divergent,
        state.logdensity,
        info.n_grad_evals + carry.hmc.refresh_evals,
        info.energy,
        info.energy_error,
        nets.step_size,
        info.num_steps,
        info.esjd,
        info.log_jacobian,
    )
    hmc_carry = carry.hmc._replace(state=hmc_state, refresh_evals=jnp.zeros((), int))
    return carry._replace(hmc=hmc_carry), state.position, stats


# --------------------------------------------------------------------------- starting training


def chain_estimates(carry: L2HMCCarry):
    """(centre, diagonal inverse mass, step size) of one chain's HMC warm-up."""
    step_size, inverse_mass = adaptation.warmup_final(carry.hmc.warmup)
    return carry.center_estimate, inverse_mass, step_size


def kept_mask(settings: L2HMCSettings, warmup_iteration):
    """Which rows of ``warmup_draws`` were filled: all of them unless warm-up ended early."""
    return jnp.arange(settings.num_kept) < warmup_iteration - settings.first_kept


def start_chain(settings: L2HMCSettings, key, carry: L2HMCCarry) -> L2HMCCarry:
    """Fix this chain's whitening and start training."""
    center, inverse_mass, step_size = chain_estimates(carry)
    if settings.dense:
        center, inverse_mass, step_size = dense_estimates(
            carry.warmup_draws, kept_mask(settings, carry.warmup_iteration), center,
            inverse_mass, step_size,
        )
    key_nets, key_walkers = jax.random.split(key)
    training = fresh_training(
        settings, key_nets, key_walkers, center, inverse_mass, step_size,
        carry.training.context.extras,
    )
    return carry._replace(
        training=training,
        key=jax.random.key_data(key),
        started=jnp.ones((), bool),
        best=unscored(training.params),
    )


def pooled_start(settings: L2HMCSettings, key, carry: L2HMCCarry) -> L2HMCCarry:
    """Fix one whitening for all chains (batched carry) and start training."""
    center, inverse_mass, step_size = learned.mixture_moments(*jax.vmap(chain_estimates)(carry))
    if settings.dense:
        filled = jax.vmap(partial(kept_mask, settings))(carry.warmup_iteration).reshape(-1)
        center, inverse_mass, step_size = dense_estimates(
            carry.warmup_draws.reshape(-1, settings.dim), filled, center, inverse_mass,
            step_size,
        )
    key_nets, key_walkers = jax.random.split(key)
    chains = carry.started.shape[0]
    training = jax.vmap(
        lambda k, extras: fresh_training(
            settings, key_nets, k, center, inverse_mass, step_size, extras
        )
    )(jax.random.split(key_walkers, chains), carry.training.context.extras)
    return carry._replace(
        training=training,
        key=jnp.broadcast_to(jax.random.key_data(key), carry.key.shape),
        started=jnp.ones_like(carry.started),
        best=jax.vmap(unscored)(training.params),
    )


# --------------------------------------------------------------------------- the program


def l2hmc_settings(
    target: Target,
    *,
    num_steps: int = 10,
    num_walkers: int = 64,
    train_steps: int = 2000,
    learning_rate: float = 1e-2,
    final_learning_rate: float = 1e-3,
    scale: float = 1.0,
    burnin_weight: float = 1.0,
    burnin_scale: float = 0.1,
    step_size_jitter: float = 0.9,
    hmc_warmup: int = 200,
    width: int | None = None,
    depth: int = 2,
    target_accept: float = 0.8,
    max_hmc_steps: int = 1024,
    dense_whitening: bool | str = "auto",
    step_size: float | None = None,
) -> L2HMCSettings:
    """The options of ``l2hmc_program``, resolved for ``target`` (anything with ``dim``
    and ``logdensity(x, *extras)``), with the HMC program and the trainer built."""
    dim = target.dim
    dense = use_dense_whitening(dense_whitening, dim)
    per_round, _ = learned.training_rounds(train_steps, hmc_warmup, None)
    settings = L2HMCSettings(
        dim=dim,
        num_steps=num_steps,
        num_walkers=num_walkers,
        train_steps=train_steps,
        per_round=per_round,
        scale=scale,
        burnin_weight=burnin_weight,
        burnin_scale=burnin_scale,
        jitter=float(step_size_jitter),
        hmc_warmup=hmc_warmup,
        width=l2hmc.default_width(dim) if width is None else width,
        depth=depth,
        dense=dense,
        num_kept=max(hmc_warmup // 2, 1) if dense else 1,
        logdensity=target.logdensity,
        hmc_part=hmc_program(
            target, target_accept=target_accept, max_steps=max_hmc_steps, step_size=step_size
        ),
        hmc_codes=jnp.asarray(adaptation.window_codes(hmc_warmup), jnp.int8),
    )
    return settings._replace(trainer=make_trainer(settings, learning_rate, final_learning_rate))


def l2hmc_program(target: Target, *, trained=None, **options) -> ChainProgram:
    """The ``ChainProgram`` of L2HMC on ``target``; ``options`` as ``l2hmc_settings``'s
    (``steps.l2hmc.L2HMC`` documents them; ``step_size`` is the HMC warm-up's initial one).

    With ``trained`` (a ``TrainedL2HMC``) the chain runs that kernel from the first
    iteration: no HMC warm-up, no training, nothing adapted (warm-up iterations are
    ordinary transitions).
    """
    if trained is not None:
        options["train_steps"] = 0
    settings = l2hmc_settings(target, **options)
    method = learned.LearnedMethod(
        init=partial(init_carry, settings, trained),
        refresh=lambda carry, position, extras: learned.refresh_training(
            carry, settings.hmc_part.refresh, position, extras
        ),
        hmc_iteration=partial(hmc_iteration, settings),
        learned_iteration=partial(l2hmc_iteration, settings),
        start_chain=partial(start_chain, settings),
        pooled_start=partial(pooled_start, settings),
        run_round=partial(run_round, settings),
        report_restored=True,
        round_state=lambda carry: carry.best,
        with_round_state=lambda carry, best: carry._replace(best=best),
    )
    return learned.learned_program(
        method,
        learned_mode=L2HMC_MODE,
        train_steps=settings.train_steps,
        hmc_warmup=settings.hmc_warmup,
        num_walkers=settings.num_walkers,
        stat_specs=COMMON_STATS + L2HMC_STATS,
        trained=trained is not None,
    )
