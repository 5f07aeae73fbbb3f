"""``L2HMC``: a learned leapfrog kernel (Levy et al. 2018), trained during warm-up.

Warm-up has three parts, all inside the chain's carry (so every PyMC chain starts afresh):

1. *HMC warm-up* (``hmc_warmup`` iterations, 200 by default): true-gradient HMC with
   Stan's step-size and diagonal-mass adaptation (``steps/hmc.py``'s program, run on a
   fixed schedule of its own so it does not depend on the length of ``tune``). It gives
   the whitening x = c + S y in which the networks work and the initial step size, so
   targets of any scale start from the same place: the untrained kernel is HMC with
   inverse mass matrix S Sᵀ. S is dense or diagonal (``dense_whitening``, below).
2. *Training* (``train_steps`` optimiser steps, 2000 by default): an ensemble of
   ``num_walkers`` walkers, started from N(c, S Sᵀ), is advanced by the current kernel;
   each move is an Adam step on the paper's ESJD loss (``kernels.l2hmc.esjd_loss``) over
   the walkers plus as many fresh draws from the initial distribution (the burn-in term),
   here N(c, σ_b² S Sᵀ) with σ_b = ``burnin_scale`` = 0.1 posterior standard deviations.
   (On the 2-d strongly correlated Gaussian, 1000 steps, three seeds, the minimum of bulk
   and tail ESS per MH step was 0.28–0.49 with σ_b = 0.1, 0.27–0.40 with 0.3, 0.29–0.31
   without the term and 0.17–0.32 with σ_b = 1: draws from the whitened N(c, M⁻¹) land
   far off a narrow ridge, where nothing is accepted, and their reciprocal term swamps
   the loss.) The loop is ``ensemble.py``'s, whose guard rejects any step with a
   non-finite loss, gradient or update (the parameters roll back to their last finite
   values and training continues). The budget is counted in optimiser steps and spread
   over the rest of ``tune`` in rounds; whatever is left when warm-up ends (``tune``
   shorter than planned, or unknown, as on PyMC 5) is trained then, in more rounds of
   the same compiled function (``ChainProgram.train_pending``). So the
   kernel a chain ends up with does not depend on ``tune`` as long as ``tune`` covers
   the HMC warm-up.
3. The chain itself runs the current learned kernel between rounds, and the kernel is
   frozen when warm-up ends. Draws are exact MH transitions of a fixed kernel.

*Dense whitening* (``dense_whitening="auto"``, the default, for d ≤ ``DENSE_MAX_DIM`` = 100;
``True`` / ``False`` force it). The HMC warm-up adapts a diagonal M⁻¹, which cannot undo a
rotation: on ``rotated_gaussian(20)`` (eigenvalues log-spaced in [1e-2, 1e2] under a random
rotation) the diagonally whitened target keeps a condition number of ~1e4, T = 10 learned
leapfrog steps go nowhere, and the benchmark (fast driver, 4 chains × 2000 draws, tune
1000) measured a minimum bulk ESS of 17 and max |z| = 4.06. So the positions of the second
half of the HMC warm-up (100 per chain by default, kept in the carry; pooled over the
chains in the fast driver) give a dense covariance Σ̂ (``whitening.dense_covariance``, a
little shrinkage towards its diagonal) and the networks run in y with x = c + L y,
L = cholesky(Σ̂), c the mean of the same positions. The whitening is computed once, when
training starts (between two transitions), and then fixed; draws are exact whatever Σ̂
is. The warm-up's ε was tuned under the diagonal whitening, where the narrowest direction
of the target is σ_min = √λ_min(D^{-1/2} Σ̂ D^{-1/2}) wide; under L it is about 1, so ε
starts at ε/σ_min (clipped to a factor MAX_STEP_RESCALE = 20 either way; training adapts
it from there). Measured with the defaults (fast driver, 4 chains × 2000 draws, tune 1000,
seed 20240601, on a shared 2-core machine): on ``rotated_gaussian(20)`` bulk / tail ESS
10389 / 2831, acceptance 0.92, max |z| = 2.40 (exact), against 17 / 30 and |z| = 4.06 with
``dense_whitening=False`` in the same run; seeds 1 and 2 gave 2755 / 1746 and 2839 / 1568,
both exact (|z| ≤ 3.12), but acceptance 0.48 with ~40 % of transitions flagged divergent
(presumably the learned ε sits near the stability limit of the narrowest direction and
the jitter pushes it over; not investigated). On the 2-d strongly correlated Gaussian
3999 / 2365, on ``ill_conditioned_gaussian(50)`` 5647 / 3021 (min of bulk and
tail per MH step 0.30 and 0.38; the paper's 0.232 and 0.073), on ``banana()`` 7000 / 4263.
On ``funnel(20)`` the dense whitening does not fix the neck (bulk ESS 80, acceptance 0.17,
not exact-checkable at that ESS, max |z| 5.55), but the diagonal one was worse on that seed
(bulk ESS 7). The threshold 100: a dense whitening costs a d × d matrix-vector product per
gradient and a Cholesky factorisation per transition, small next to the networks' 4T calls
of width ≤ 100 up to d ≈ 100 and growing as d² beyond; and 400 pooled points estimate a
d × d covariance well only while d is well below that (at d = 50 the dense estimate lost
nothing on the diagonal ill-conditioned Gaussian: 0.378 per MH step against the 0.37–0.38
measured before with the diagonal whitening). Under ``pm.sample`` each chain estimates Σ̂
from its own 100 positions, which is noisy for d near 100 (not measured); pass
``dense_whitening=False`` there for large, weakly correlated models.

``pm.sample`` trains one kernel per chain; ``pymc_neural_steps.sample`` trains ONE kernel
for all chains (``pooled_train``): the chains' HMC estimates are pooled into one
whitening, and the ensemble is drawn from all chains (``num_walkers`` in total, split
evenly), so the training cost does not grow with the number of chains.

Departure from the paper (exact, like the kernel's own): each transition multiplies ε by
a factor drawn uniformly from [1 − j, 1 + j] (``step_size_jitter``), in training and in
sampling. An auxiliary variable drawn independently of the state leaves each conditional
kernel exact, hence their mixture. Without it, ESJD training on a well-whitened, nearly
Gaussian target converges to a trajectory of half a period, x' ≈ 2c − x: a huge jump,
an excellent bulk ESS of the mean, and a chain that never changes ‖x − c‖ (tail ESS
≈ 1e-3 per step on the 50-d ill-conditioned Gaussian). Measured with the defaults
(fast driver, 4 chains × 5000 draws, three seeds), the minimum of bulk and tail ESS per
MH step was 0.37–0.38 with j = 0.9 and 0.54–0.57 with j = 0.5 on that Gaussian, and
0.29–0.37 (j = 0.9) and 0.25–0.46 (j = 0.5) on the 2-d strongly correlated one; the
default 0.9 is the steadier there, and its occasional short steps help in a funnel's neck.

*Stability trim* (when the budget is spent, ``stability_factor``). ESJD training can leave
ε where the top of the jitter range is past the leapfrog's stability limit somewhere in the
posterior: those transitions are all rejected and flagged divergent. The trained kernel is
tried on every walker at 17 jitter factors in [1 − j, 1 + j]; from the first factor at
which more than 5 % of the walkers propose a move accepted with probability below 0.01, ε
is scaled down so that the range ends just below it. The draws are then those of a fixed
kernel as before (exact for any ε); the probes cost 17 × walkers × (T + 1) gradients,
counted in ``training_grad_evals``. Measured (fast driver, 4 chains × 2000 draws, tune
1000; min bulk / tail ESS, fraction of draws divergent): ``rotated_gaussian(20)`` seed 1
2755 / 1746 and 41 % without the trim, 20238 / 2492 and 0 % with it; ``banana()`` seed
20240601 2576 / 1680 and 39 % → 6754 / 4994 and 0 %, seed 1 → 5418 / 3476 and 0 %, seed 2
unchanged (8353 / 5105, nothing trimmed); on the 2-d strongly correlated, 50-d
ill-conditioned and 20-d rotated Gaussians at seed 20240601 nothing was trimmed
(6470 / 4089, 5749 / 3301, 9579 / 3194, all exact). A first version that trimmed only on
the walkers' *mean* acceptance (< 0.1) left the banana at 13 % divergent draws, with
sds 4.2 MCSE low: rejections concentrated in the curved tails do not move the mean.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, ensemble
from pymc_neural_steps import whitening as wh
from pymc_neural_steps.kernels import hmc, l2hmc
from pymc_neural_steps.steps.base import ChainProgram, NeuralStep, StatSpec, pack_stats
from pymc_neural_steps.steps.hmc import HMC_STATS, HMCCarry, hmc_program
from pymc_neural_steps.target import Target, build_layout

__all__ = ["L2HMC", "TrainedL2HMC", "l2hmc_program"]

HMC_MODE, L2HMC_MODE = "hmc", "l2hmc"

# PyMC 5 does not tell a step how long warm-up is; training rounds are then placed as if
# it were pm.sample's default, and what is left is trained at stop_tuning.
DEFAULT_TUNE_HORIZON = 1000
MAX_ROUNDS = 20
# The end-of-budget guard (``run_round``): a final kernel whose ESJD on the walkers is below
# this fraction of the best seen at a round boundary is replaced by that best kernel.
BEST_FRACTION = 0.5
SCORE_SALT = 2**31 - 1  # separates the scorings' randomness from the training steps'
# The end-of-budget stability trim (``stability_factor``): the jitter factors probed, the
# acceptance probability below which a walker's proposal counts as a certain rejection,
# and the fraction of walkers with one above which a jittered step counts as unstable.
TRIM_GRID = 17
TRIM_REJECTED = 0.01
TRIM_MAX_REJECTED = 0.05
TRIM_SALT = 2**31 - 2
# dense_whitening="auto" whitens densely up to this dimension (see the module docstring).
DENSE_MAX_DIM = 100
# The step size found by the diagonal HMC warm-up is rescaled for the dense whitening by at
# most this factor either way (see ``dense_step_size``).
MAX_STEP_RESCALE = 20.0
# Fewer kept warm-up positions than this (warm-up shorter than ``hmc_warmup``): the dense
# whitening falls back to the diagonal estimate (written as a matrix).
MIN_DENSE_POINTS = 10


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
    d = jnp.sqrt(diagonal_inverse_mass)
    correlation = covariance / (d[:, None] * d[None, :])
    smallest = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(correlation)[0], 1e-300))
    ratio = jnp.clip(1.0 / smallest, 1.0 / MAX_STEP_RESCALE, MAX_STEP_RESCALE)
    return step_size * ratio


def _from_white_rows(noise, center, inverse_mass):
    """center + S y for every row y of ``noise`` (n, d)."""
    scale = wh.scale_from_inverse_mass(inverse_mass)
    if scale.ndim == 2:
        return center + noise @ scale.T
    return center + scale * noise

L2HMC_STATS = HMC_STATS + (
    # (step_size: the ε of this transition, jitter included; n_steps: T, or HMC's steps.)
    StatSpec("esjd", np.float64),  # A·‖x' − x‖² of the proposal (HMC warm-up: the realised jump)
    StatSpec("log_jacobian", np.float64),
    # Training that ran since the previous iteration (0 / NaN when none did):
    StatSpec("training_steps", np.int64),
    StatSpec("training_rollbacks", np.int64),  # steps rejected as non-finite
    StatSpec("training_loss", np.float64),  # mean ESJD loss of the accepted steps
    StatSpec("training_acceptance", np.float64),  # mean acceptance of the walkers
    # Forward true gradients of training on this chain's walkers and burn-in draws (the
    # reverse pass through them is not counted); summed over chains, the total.
    StatSpec("training_grad_evals", np.int64),
    # Wall seconds of training, measured by the driver; a pooled run reports its full
    # time on every chain (the chains wait for it together).
    StatSpec("training_time", np.float64),
    # 1 on the iteration after the end-of-budget guard replaced a collapsed final kernel
    # by the best one scored during training (see ``run_round``).
    StatSpec("training_restored", np.int64),
)


class Whitening(NamedTuple):
    """The fixed affine map x = center + S y, and the step's extra inputs.

    S = √inverse_mass (elementwise) for an ``inverse_mass`` of shape (d,), its Cholesky
    factor for one of shape (d, d) (``whitening.scale_from_inverse_mass``)."""

    center: jax.Array
    inverse_mass: jax.Array
    extras: tuple  # values of the model's other variables (compound steps)


class TrainingReport(NamedTuple):
    """Training since the last reported iteration, for the next iteration's stats."""

    steps: jax.Array
    rollbacks: jax.Array
    loss: jax.Array
    acceptance: jax.Array
    grad_evals: jax.Array
    restored: jax.Array  # 1 when the end-of-budget guard swapped in the best kernel


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


@dataclass(frozen=True)
class TrainedL2HMC:
    """A trained kernel, detached from any model: the networks, the whitening they were
    trained in, and the model layout they belong to. ``L2HMC.save`` writes it (``io.py``);
    ``L2HMC.load`` / ``L2HMC.from_trained`` sample with it."""

    networks: l2hmc.L2HMCNetworks  # numpy leaves
    center: np.ndarray
    inverse_mass: np.ndarray
    layout: dict  # Layout.fingerprint() of the model it was trained on
    options: dict  # the L2HMC settings it was trained with (network shape, jitter, ...)
    report: dict = field(default_factory=dict)  # training steps, rollbacks, acceptance

    @property
    def step_size(self) -> float:
        return float(np.exp(self.networks.log_step_size))


def _empty_report(dtype=jnp.float64) -> TrainingReport:
    zero = jnp.zeros((), jnp.int64)
    nan = jnp.full((), jnp.nan, dtype)
    return TrainingReport(zero, zero, nan, nan, zero, zero)


def _step_scaled(nets: l2hmc.L2HMCNetworks, factor) -> l2hmc.L2HMCNetworks:
    """The networks with ε multiplied by ``factor``."""
    return eqx.tree_at(lambda n: n.log_step_size, nets, nets.log_step_size + jnp.log(factor))


def _jittered(nets: l2hmc.L2HMCNetworks, key: jax.Array, jitter: float) -> l2hmc.L2HMCNetworks:
    """The networks with ε multiplied by u ~ U[1 − jitter, 1 + jitter] (an exact mixture)."""
    if jitter == 0:
        return nets
    u = jax.random.uniform(
        key, dtype=nets.log_step_size.dtype, minval=1.0 - jitter, maxval=1.0 + jitter
    )
    return _step_scaled(nets, u)


def training_rounds(
    budget: int, hmc_warmup: int, num_tune: int | None, max_rounds: int = MAX_ROUNDS
) -> tuple[int, frozenset[int]]:
    """(optimiser steps per round, warm-up iterations after which a round runs).

    The first round follows the last HMC warm-up iteration; the others are spread evenly
    over the rest of warm-up. Rounds that do not fit are left to ``stop_tuning``.
    """
    if budget <= 0:
        return 0, frozenset()
    rounds = min(max_rounds, budget)
    per_round = math.ceil(budget / rounds)
    rounds = math.ceil(budget / per_round)
    horizon = DEFAULT_TUNE_HORIZON if num_tune is None else num_tune
    first = hmc_warmup - 1
    span = max(horizon - hmc_warmup, 0)
    at = {first + (k * span) // rounds for k in range(rounds)}
    return per_round, frozenset(i for i in at if num_tune is None or i < num_tune)


def l2hmc_program(
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
    trained: TrainedL2HMC | None = None,
) -> ChainProgram:
    """The ``ChainProgram`` of L2HMC on ``target`` (see the module docstring).

    With ``trained`` the chain runs that kernel from the first iteration: no HMC warm-up,
    no training, nothing adapted (warm-up iterations are ordinary transitions).
    """
    dim = target.dim
    if trained is not None:
        train_steps = 0
    width = l2hmc.default_width(dim) if width is None else width
    hmc_part = hmc_program(target, target_accept=target_accept, max_steps=max_hmc_steps)
    hmc_codes = jnp.asarray(adaptation.window_codes(hmc_warmup), jnp.int8)
    per_round, round_ends = training_rounds(train_steps, hmc_warmup, None)
    optimizer = ensemble.adam_with_decay(
        learning_rate, train_steps, final_fraction=final_learning_rate / learning_rate
    )
    jitter = float(step_size_jitter)
    dense = use_dense_whitening(dense_whitening, dim)
    # Dense: the positions of the second half of the HMC warm-up are kept for the estimate.
    num_kept = max(hmc_warmup // 2, 1) if dense else 1
    first_kept = hmc_warmup - num_kept

    def logdensity_fn(extras):
        return lambda x: target.logdensity(x, *extras)

    # --- the training recipe ----------------------------------------------------------
    def objective(nets, key, walkers, whitening):
        key_loss, key_burnin, key_jitter = jax.random.split(key, 3)
        # The burn-in term: fresh draws from the initial distribution N(c, σ_b² S Sᵀ).
        noise = burnin_scale * jax.random.normal(key_burnin, walkers.shape, walkers.dtype)
        burnin = _from_white_rows(noise, whitening.center, whitening.inverse_mass)
        return l2hmc.esjd_loss(
            _jittered(nets, key_jitter, jitter),
            key_loss,
            walkers,
            burnin,
            logdensity_fn(whitening.extras),
            scale=scale,
            burnin_weight=burnin_weight,
            inverse_mass=whitening.inverse_mass,
            center=whitening.center,
        )

    def advance(key, nets, walkers, aux, whitening):
        # The loss's proposals came from the current networks: accepting them with the MH
        # probability is one exact transition of the current kernel for every walker.
        log_u = jnp.log(jax.random.uniform(key, walkers.shape[:1], walkers.dtype))
        accept = log_u < aux.log_accept_ratio
        return jnp.where(accept[:, None], aux.proposal.position, walkers)

    trainer = ensemble.Trainer(
        objective, advance, optimizer, monitor=lambda aux: aux.acceptance_rate
    )
    # Forward gradient evaluations per start point per loss: one at the start (esjd_loss
    # recomputes it) and one per learned leapfrog step; the reverse pass is not counted.
    grads_per_start = num_steps + 1

    def kernel_score(key, nets, walkers, whitening):
        # ESJD of the un-jittered kernel on the walkers (whitened units), from one batch of
        # proposals: what the end-of-budget guard compares.
        _, aux = l2hmc.esjd_loss(
            nets,
            key,
            walkers,
            None,
            logdensity_fn(whitening.extras),
            scale=scale,
            inverse_mass=whitening.inverse_mass,
            center=whitening.center,
        )
        return jnp.where(jnp.isfinite(aux.esjd_whitened), aux.esjd_whitened, 0.0)

    def stability_factor(key, nets, walkers, whitening):
        """The factor for ε.

        The jitter multiplies ε by up to 1 + j; ESJD training can leave ε where the top of
        that range is beyond the leapfrog's stability limit in the narrowest direction,
        and those transitions are all rejected and flagged divergent (20-d rotated
        Gaussian, seed 1: 41 % of draws, every one with ε above 1.16× the trained ε).
        Each of ``TRIM_GRID`` factors u in [1 − j, 1 + j] is tried on every walker; if at
        some u more than ``TRIM_MAX_REJECTED`` of the walkers propose a move accepted with
        probability below ``TRIM_REJECTED`` (a near-certain rejection: a divergence, or a
        region where the step is unstable, as in a banana's curved tails), ε is scaled so
        that 1 + j lands on the largest u below the first such one (on the lowest u if even
        that one fails).
        """
        grid = jnp.linspace(1.0 - jitter, 1.0 + jitter, TRIM_GRID)

        def rejected(u, k):
            _, aux = l2hmc.esjd_loss(
                _step_scaled(nets, u), k, walkers, None, logdensity_fn(whitening.extras),
                scale=scale,
                inverse_mass=whitening.inverse_mass, center=whitening.center,
            )
            log_ratio = jnp.nan_to_num(aux.log_accept_ratio, nan=-jnp.inf)
            return jnp.mean(log_ratio < jnp.log(TRIM_REJECTED))

        rates = jax.vmap(rejected)(grid, jax.random.split(key, TRIM_GRID))
        failing = rates > TRIM_MAX_REJECTED
        first_fail = jnp.argmax(failing)
        last_good = grid[jnp.maximum(first_fail - 1, 0)]
        return jnp.where(jnp.any(failing), last_good / (1.0 + jitter), 1.0)

    def unscored(params):
        return BestKernel(params, jnp.full((), -jnp.inf, jnp.float64), jnp.zeros((), bool))

    def fresh_training(key, walker_key, center, inverse_mass, step_size, extras):
        nets = l2hmc.init_networks(key, dim, num_steps, width, depth, step_size=1.0)
        log_eps = jnp.log(jnp.asarray(step_size, nets.log_step_size.dtype))
        nets = eqx.tree_at(lambda n: n.log_step_size, nets, log_eps)
        noise = jax.random.normal(walker_key, (num_walkers, dim), jnp.float64)
        walkers = _from_white_rows(noise, center, inverse_mass)
        return ensemble.init(trainer, nets, walkers, Whitening(center, inverse_mass, extras))

    # --- one chain ----------------------------------------------------------------------
    def init(position, extras):
        hmc_carry = hmc_part.init(position, extras)
        position = hmc_carry.state.position
        if trained is None:
            identity = jnp.eye(dim) if dense else jnp.ones(dim)
            training = fresh_training(
                jax.random.key(0), jax.random.key(1), position, identity, 1.0, tuple(extras)
            )
        else:
            nets = jax.tree.map(jnp.asarray, trained.networks)
            whitening = Whitening(
                jnp.asarray(trained.center), jnp.asarray(trained.inverse_mass), tuple(extras)
            )
            walkers = jnp.broadcast_to(whitening.center, (num_walkers, dim))
            training = ensemble.init(trainer, nets, walkers, whitening)
        return L2HMCCarry(
            hmc=hmc_carry,
            warmup_iteration=jnp.zeros((), jnp.int64),
            center_welford=adaptation.welford_init(dim),
            center_estimate=position,
            warmup_draws=jnp.zeros((num_kept, dim), position.dtype),
            training=training,
            key=jax.random.key_data(jax.random.key(0)),
            started=jnp.asarray(trained is not None),
            report=_empty_report(),
            best=unscored(training.params),
        )

    def refresh(carry, position, extras):
        hmc_carry = hmc_part.refresh(carry.hmc, position, extras)
        training = carry.training
        if extras:
            training = training._replace(context=training.context._replace(extras=tuple(extras)))
        return carry._replace(hmc=hmc_carry, training=training)

    def report_stats(carry, info_stats):
        report = carry.report
        training_stats = pack_stats(
            report.steps,
            report.rollbacks,
            report.loss,
            report.acceptance,
            report.grad_evals,
            0.0,  # training_time: the driver measures it
            report.restored,
        )
        return jnp.concatenate([info_stats, training_stats])

    def hmc_iteration(key, carry, extras):
        code = hmc_codes[jnp.minimum(carry.warmup_iteration, hmc_warmup - 1)]
        start = carry.hmc.state.position
        hmc_carry, position, stats = hmc_part.tune(key, carry.hmc, code, extras)
        # The centre of the whitening: the mean over the same window as the mass matrix.
        collect = code >= adaptation.SLOW
        updated = adaptation.welford_update(carry.center_welford, position)
        welford = jax.tree.map(lambda a, b: jnp.where(collect, a, b), updated, carry.center_welford)
        window_end = code == adaptation.SLOW_END
        center = jnp.where(window_end, welford.mean, carry.center_estimate)
        welford = jax.tree.map(
            lambda a, b: jnp.where(window_end, a, b), adaptation.welford_init(dim), welford
        )
        if dense:
            slot = carry.warmup_iteration - first_kept
            kept = jnp.where(
                slot >= 0,
                carry.warmup_draws.at[jnp.clip(slot, 0, num_kept - 1)].set(position),
                carry.warmup_draws,
            )
        else:
            kept = carry.warmup_draws
        carry = carry._replace(
            hmc=hmc_carry,
            warmup_iteration=carry.warmup_iteration + 1,
            center_welford=welford,
            center_estimate=center,
            warmup_draws=kept,
        )
        jump = jnp.sum((position - start) ** 2)
        stats = jnp.concatenate([stats, pack_stats(jump, 0.0)])
        return carry, position, stats

    def l2hmc_iteration(key, carry, extras):
        key_jitter, key_kernel = jax.random.split(key)
        whitening = carry.training.context
        nets = _jittered(carry.training.params, key_jitter, jitter)
        kernel = l2hmc.build_kernel(logdensity_fn(extras))
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

    def iterate(key, carry, extras, mode):
        step = hmc_iteration if mode == HMC_MODE else l2hmc_iteration
        new_carry, position, stats = step(key, carry, extras)
        stats = report_stats(carry, stats)
        return new_carry._replace(report=_empty_report()), position, stats

    def tune(key, carry, code, extras, mode=HMC_MODE):
        return iterate(key, carry, extras, mode)

    def draw(key, carry, extras, mode=L2HMC_MODE):
        return iterate(key, carry, extras, mode)

    # --- training: one chain -------------------------------------------------------------
    def chain_estimates(carry):
        step_size, inverse_mass = adaptation.warmup_final(carry.hmc.warmup)
        return carry.center_estimate, inverse_mass, step_size

    def kept_mask(warmup_iteration):
        # Which rows of warmup_draws were filled: all of them unless warm-up ended early.
        return jnp.arange(num_kept) < warmup_iteration - first_kept

    def dense_estimates(draws, filled, center, diagonal_inverse_mass, step_size):
        # draws: (n, d) warm-up positions (pooled over chains in pooled mode); filled: (n,).
        # Too few positions (warm-up shorter than hmc_warmup): the diagonal estimate, as a
        # matrix, so the carry keeps its shapes.
        enough = jnp.sum(filled) >= MIN_DENSE_POINTS
        weights = jnp.where(enough, filled, True).astype(draws.dtype)
        covariance = wh.dense_covariance(draws, weights)
        covariance = jnp.where(enough, covariance, jnp.diag(diagonal_inverse_mass))
        center = jnp.where(enough, weights @ draws / jnp.sum(weights), center)
        step_size = jnp.where(
            enough, dense_step_size(step_size, diagonal_inverse_mass, covariance), step_size
        )
        return center, covariance, step_size

    def start_chain(key, carry):
        center, inverse_mass, step_size = chain_estimates(carry)
        if dense:
            center, inverse_mass, step_size = dense_estimates(
                carry.warmup_draws, kept_mask(carry.warmup_iteration), center, inverse_mass,
                step_size,
            )
        key_nets, key_walkers = jax.random.split(key)
        training = fresh_training(
            key_nets, key_walkers, center, inverse_mass, step_size, carry.training.context.extras
        )
        return carry._replace(
            training=training,
            key=jax.random.key_data(key),
            started=jnp.ones((), bool),
            best=unscored(training.params),
        )

    def keep_best(best, params, score):
        better = score > best.score
        return BestKernel(
            jax.tree.map(lambda a, b: jnp.where(better, a, b), params, best.params),
            jnp.where(better, score, best.score),
            best.restored,
        )

    def run_round(key_data, training, best, walkers_per_chain):
        """One round: up to ``per_round`` steps within the budget; (training, best, report).

        The kernel is scored (ESJD on the walkers) before and after the round. When the
        budget is spent, a final kernel scoring under half the best score seen is replaced
        by that best one: the ESJD loss can step over a cliff where every proposal is
        rejected, its gradient is then exactly zero, and training never comes back (seen
        on the 20-d rotated Gaussian: walker acceptance ~0.1, the chain stuck).
        """
        steps = jnp.clip(train_steps - training.num_steps, 0, per_round)
        key = jax.random.wrap_key_data(key_data)
        score_key = jax.random.fold_in(key, SCORE_SALT)
        before = kernel_score(
            jax.random.fold_in(score_key, 2 * training.num_steps),
            training.params, training.walkers, training.context,
        )
        best = keep_best(best, training.params, before)
        training, summary = ensemble.train(trainer, training, key, steps)
        after = kernel_score(
            jax.random.fold_in(score_key, 2 * training.num_steps + 1),
            training.params, training.walkers, training.context,
        )
        best = keep_best(best, training.params, after)
        collapsed = (training.num_steps >= train_steps) & (after < BEST_FRACTION * best.score)
        training = training._replace(
            params=jax.tree.map(
                lambda a, b: jnp.where(collapsed, a, b), best.params, training.params
            )
        )
        best = best._replace(restored=best.restored | collapsed)
        trim_grads = 0
        if jitter > 0:
            finished = (steps > 0) & (training.num_steps >= train_steps)
            factor = stability_factor(
                jax.random.fold_in(key, TRIM_SALT), training.params, training.walkers,
                training.context,
            )
            factor = jnp.where(finished, factor, 1.0)
            training = training._replace(params=_step_scaled(training.params, factor))
            trim_grads = jnp.where(finished, TRIM_GRID * walkers_per_chain * grads_per_start, 0)
        report = TrainingReport(
            steps=summary.num_steps,
            rollbacks=summary.num_rejected,
            loss=summary.mean_loss,
            acceptance=summary.mean_monitor,
            # This chain's share: its walkers and as many burn-in draws, and its walkers
            # in the two scorings.
            grad_evals=(summary.num_steps + 1) * 2 * walkers_per_chain * grads_per_start
            + trim_grads,
            restored=collapsed.astype(jnp.int64),
        )
        return training, best, report

    def train(key, carry):
        # The first round starts training (with this key, kept for every later round, so
        # that the randomness of step i does not depend on how the budget is split).
        carry = jax.lax.cond(carry.started, lambda c: c, lambda c: start_chain(key, c), carry)
        training, best, report = run_round(carry.key, carry.training, carry.best, num_walkers)
        return carry._replace(
            training=training, best=best, report=_add_reports(carry.report, report)
        )

    # --- training: all chains, one kernel ---------------------------------------------------
    def pooled_start(key, carry):
        centers, inverse_masses, step_sizes = jax.vmap(chain_estimates)(carry)
        # One whitening for all chains: the moments of the mixture of the chains' estimates.
        center = jnp.mean(centers, axis=0)
        inverse_mass = jnp.mean(inverse_masses + (centers - center) ** 2, axis=0)
        step_size = jnp.exp(jnp.mean(jnp.log(step_sizes)))
        if dense:
            filled = jax.vmap(kept_mask)(carry.warmup_iteration).reshape(-1)
            center, inverse_mass, step_size = dense_estimates(
                carry.warmup_draws.reshape(-1, dim), filled, center, inverse_mass, step_size
            )
        key_nets, key_walkers = jax.random.split(key)
        chains = carry.started.shape[0]
        training = jax.vmap(
            lambda k, extras: fresh_training(
                key_nets, k, center, inverse_mass, step_size, extras
            )
        )(jax.random.split(key_walkers, chains), carry.training.context.extras)
        return carry._replace(
            training=training,
            key=jnp.broadcast_to(jax.random.key_data(key), carry.key.shape),
            started=jnp.ones_like(carry.started),
            best=jax.vmap(unscored)(training.params),
        )

    def pooled_train(key, carry):
        chains = carry.started.shape[0]
        carry = jax.lax.cond(
            carry.started[0], lambda c: c, lambda c: pooled_start(key, c), carry
        )
        # The shared ensemble: the first k walkers of every chain, about num_walkers in all.
        k = max(1, -(-num_walkers // chains))
        batched = carry.training
        shared = jax.tree.map(lambda a: a[0], batched)
        shared = shared._replace(walkers=batched.walkers[:, :k].reshape(chains * k, dim))
        best = jax.tree.map(lambda a: a[0], carry.best)
        shared, best, report = run_round(carry.key[0], shared, best, k)
        walkers = batched.walkers.at[:, :k].set(shared.walkers.reshape(chains, k, dim))

        def broadcast(tree):
            return jax.tree.map(lambda a: jnp.broadcast_to(a, (chains, *jnp.shape(a))), tree)

        training = broadcast(shared._replace(walkers=jnp.zeros(())))._replace(
            walkers=walkers, context=batched.context
        )
        reports = jax.vmap(_add_reports, (0, None))(carry.report, report)
        return carry._replace(training=training, best=broadcast(best), report=reports)

    def train_pending(carry):
        # Host side, one chain or all: warm-up ended before the budget was spent (or even
        # before training started); the drivers then call train until it is.
        started = np.asarray(carry.started)
        done = np.asarray(carry.training.num_steps)
        return bool((~started).any() or (done < train_steps).any())

    def train_at(iteration, num_tune):
        if num_tune is None:
            return iteration in round_ends
        return iteration in training_rounds(train_steps, hmc_warmup, num_tune)[1]

    def mode_of(carry):
        started = np.asarray(carry.started)
        return L2HMC_MODE if started.all() else HMC_MODE

    if trained is not None:  # nothing to learn
        return ChainProgram(
            init=init,
            tune=tune,
            end_tune=lambda carry: carry,
            draw=draw,
            refresh=refresh,
            stat_specs=L2HMC.stat_specs(),
            mode_of=mode_of,
        )
    return ChainProgram(
        init=init,
        tune=tune,
        # The kernel is frozen by no longer training it: the networks stay in the carry.
        end_tune=lambda carry: carry,
        draw=draw,
        refresh=refresh,
        stat_specs=L2HMC.stat_specs(),
        train=train,
        pooled_train=pooled_train,
        train_at=train_at,
        mode_of=mode_of,
        train_pending=train_pending,
    )


def _add_reports(a: TrainingReport, b: TrainingReport) -> TrainingReport:
    """Two pieces of training reported together (NaN-aware, step-weighted means)."""

    def mean(x, y):
        wx, wy = a.steps - a.rollbacks, b.steps - b.rollbacks
        total = wx + wy
        x0 = jnp.where(wx > 0, x, 0.0)
        y0 = jnp.where(wy > 0, y, 0.0)
        return jnp.where(total > 0, (wx * x0 + wy * y0) / jnp.maximum(total, 1), jnp.nan)

    return TrainingReport(
        steps=a.steps + b.steps,
        rollbacks=a.rollbacks + b.rollbacks,
        loss=mean(a.loss, b.loss),
        acceptance=mean(a.acceptance, b.acceptance),
        grad_evals=a.grad_evals + b.grad_evals,
        restored=a.restored + b.restored,
    )


class L2HMC(NeuralStep):
    """L2HMC (Levy, Hoffman & Sohl-Dickstein 2018): a leapfrog kernel learned in warm-up.

    Parameters
    ----------
    vars
        Value variables to sample (all continuous ones by default).
    num_steps
        Learned leapfrog steps per transition (T); a transition costs T true gradients.
    num_walkers
        Size of the training ensemble: per chain under ``pm.sample``, shared by all chains
        under ``pymc_neural_steps.sample``.
    train_steps
        Training budget in optimiser steps, whatever the length of ``tune``.
    learning_rate, final_learning_rate
        Adam's rate, decayed exponentially from the first to the second over the budget.
    scale
        λ of the loss, in posterior standard deviations.
    burnin_weight
        λ_b, the weight of the loss on fresh draws from the initial distribution.
    burnin_scale
        The initial distribution of the burn-in term is N(c, burnin_scale² S Sᵀ), c and
        S Sᵀ the HMC warm-up's mean and (dense or diagonal) covariance (module docstring).
    step_size_jitter
        Each transition scales ε by U[1 − j, 1 + j]; keeps training away from the
        half-period trajectories that move far but never change the radius.
    hmc_warmup
        Iterations of true-gradient HMC warm-up that set the whitening and initial ε.
    width, depth
        Hidden layers of the networks (default width 2d clipped to [10, 100]).
    target_accept
        Acceptance rate the HMC warm-up adapts its step size to.
    dense_whitening
        ``True``: the networks run in y with x = c + L y, L the Cholesky factor of a dense
        covariance estimated from the HMC warm-up's second half (pooled over chains in the
        fast driver); ``False``: the diagonal whitening x = c + √diag M⁻¹ ⊙ y; ``"auto"``
        (default): dense for d ≤ 100 (see the module docstring).
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up ``step.trained`` holds the ``TrainedL2HMC`` (the last chain's under
    ``pm.sample`` with ``cores=1``; the shared one under ``pymc_neural_steps.sample``; with
    ``cores > 1`` training happens in worker processes and nothing comes back). ``save``
    writes it; ``L2HMC.load`` samples another run, or a model with the same parameter
    layout, with it.
    """

    name = "l2hmc"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = L2HMC_STATS

    def __init__(
        self,
        vars=None,  # noqa: A002
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
        dense_whitening: bool | str = "auto",
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        if num_walkers < 1:
            raise ValueError(f"num_walkers must be at least 1, got {num_walkers}")
        if train_steps < 0:
            raise ValueError(f"train_steps must not be negative, got {train_steps}")
        if not 0.0 <= step_size_jitter < 1.0:
            raise ValueError(f"step_size_jitter must lie in [0, 1), got {step_size_jitter}")
        if hmc_warmup < 1:
            raise ValueError(f"hmc_warmup must be at least 1, got {hmc_warmup}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if learning_rate <= 0 or final_learning_rate <= 0:
            raise ValueError("learning rates must be positive")
        if not (dense_whitening == "auto" or isinstance(dense_whitening, bool)):
            raise ValueError(
                f"dense_whitening must be 'auto', True or False, got {dense_whitening!r}"
            )
        if burnin_scale < 0 or burnin_weight < 0 or scale <= 0:
            raise ValueError("scale must be positive, burnin_scale and burnin_weight not negative")
        self.options = dict(
            num_steps=int(num_steps),
            num_walkers=int(num_walkers),
            train_steps=int(train_steps),
            learning_rate=float(learning_rate),
            final_learning_rate=float(final_learning_rate),
            scale=float(scale),
            burnin_weight=float(burnin_weight),
            burnin_scale=float(burnin_scale),
            step_size_jitter=float(step_size_jitter),
            hmc_warmup=int(hmc_warmup),
            width=None if width is None else int(width),
            depth=int(depth),
            target_accept=float(target_accept),
            dense_whitening=dense_whitening,
        )
        self.trained: TrainedL2HMC | None = None  # set when warm-up ends
        self._trained_start: TrainedL2HMC | None = None  # set by from_trained / load
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)

    def _program(self, target: Target) -> ChainProgram:
        return l2hmc_program(target, trained=self._trained_start, **self.options)

    def _tuned(self, carry: Any, *, batched: bool) -> None:
        training = jax.device_get(carry.training)
        best = getattr(carry, "best", None)
        restored = None if best is None else np.asarray(jax.device_get(best.restored))
        if batched:  # one kernel for all chains: every chain holds it; take the first
            training = jax.tree.map(lambda a: a[0], training)
            restored = None if restored is None else restored[0]
        steps, rejected = int(training.num_steps), int(training.num_rejected)
        if steps and rejected == steps:
            warnings.warn(
                f"L2HMC: all {steps} training steps gave a non-finite loss or gradient and "
                "were rolled back; the kernel is the untrained one (HMC with T fixed steps). "
                "The draws are exact either way. Try a smaller learning_rate.",
                UserWarning,
                stacklevel=2,
            )
        if self._trained_start is not None:
            self.trained = self._trained_start
            return
        self.trained = TrainedL2HMC(
            networks=jax.tree.map(np.asarray, training.params),
            center=np.asarray(training.context.center),
            inverse_mass=np.asarray(training.context.inverse_mass),
            layout=self.layout.fingerprint(),
            options=dict(self.options),
            report={"train_steps": steps, "rollbacks": rejected,
                    "final_loss": _json_float(training.loss),
                    "restored_best": bool(restored) if restored is not None else False},
        )

    # --- reuse, save and load --------------------------------------------------------------
    @classmethod
    def from_trained(
        cls, source: L2HMC | TrainedL2HMC, vars=None, *, model=None, **options  # noqa: A002
    ) -> L2HMC:
        """An L2HMC for ``model`` that samples with ``source``'s trained kernel, untrained.

        ``model`` must have the parameter layout the kernel was trained on (names, shapes,
        transforms; ``LayoutMismatchError`` names the first variable that differs). The
        kernel stays exact on any such model; it is efficient if the posterior is alike.
        Warm-up iterations run the loaded kernel unchanged (no adaptation, no training).
        """
        trained = (source.trained or source._trained_start) if isinstance(source, L2HMC) else source
        if trained is None:
            raise ValueError(
                "This L2HMC step holds no trained kernel: it has not finished a warm-up in "
                "this process (pm.sample with cores=1, or pymc_neural_steps.sample), nor "
                "was it loaded."
            )
        settings = {k: v for k, v in trained.options.items() if k in _KERNEL_OPTIONS}
        settings.update(options)
        step = cls(vars, model=model, **settings)
        step.layout.check_compatible(trained.layout, what="the model the kernel was trained on")
        step._trained_start = trained
        return step

    def save(self, path) -> None:
        """Write the trained kernel to directory ``path`` (``io.py``: arrays + JSON)."""
        from pymc_neural_steps import io

        trained = self.trained or self._trained_start
        if trained is None:
            raise ValueError(
                "Nothing to save: this L2HMC step has not finished a warm-up in this process."
            )
        nets = trained.networks
        io.save_kernel(
            path,
            kind="L2HMC",
            arrays={
                "networks": nets,
                "center": trained.center,
                "inverse_mass": trained.inverse_mass,
            },
            layout=trained.layout,
            metadata={
                "network": {
                    "dim": int(nets.dim),
                    "num_steps": int(nets.num_steps),
                    "width": int(nets.x_net.hidden[0].out_features),
                    "depth": len(nets.x_net.hidden),
                    "dense_whitening": bool(np.ndim(trained.inverse_mass) == 2),
                },
                "options": trained.options,
                "report": trained.report,
            },
        )

    @classmethod
    def load(cls, path, vars=None, *, model=None, **options) -> L2HMC:  # noqa: A002
        """An L2HMC for ``model`` from a directory written by ``save`` (no code is run).

        Refused with ``LayoutMismatchError`` naming the variable if ``model``'s layout
        differs from the saved one; otherwise as ``from_trained``.
        """
        from pymc_neural_steps import io

        layout, metadata = io.read_for_model(path, "L2HMC", model, vars)
        shape = metadata["network"]
        template = l2hmc.init_networks(
            jax.random.key(0), shape["dim"], shape["num_steps"], shape["width"], shape["depth"]
        )
        dim = shape["dim"]
        arrays = io.load_arrays(
            path,
            {
                "networks": template,
                "center": np.zeros(dim),
                "inverse_mass": np.zeros((dim, dim) if shape.get("dense_whitening") else dim),
            },
            metadata,
        )
        trained = TrainedL2HMC(
            networks=jax.tree.map(np.asarray, arrays["networks"]),
            center=np.asarray(arrays["center"]),
            inverse_mass=np.asarray(arrays["inverse_mass"]),
            layout=metadata["layout"],
            options=dict(metadata.get("options") or {}),
            report=dict(metadata.get("report") or {}),
        )
        return cls.from_trained(trained, vars, model=model, **options)


# Settings that describe the kernel itself and travel with it.
_KERNEL_OPTIONS = frozenset({"num_steps", "width", "depth", "step_size_jitter"})


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
