"""``EntropyFlowMC``: the proposal-entropy neural sampler (Li, Chen & Sommer 2021) as a step.

The kernel is ``kernels/entropy.py``'s: x' = x + ε f(z₀; x), a conditional coupling flow
of Gaussian noise that uses ∇U, with both proposal densities tractable, so every draw is
an ordinary, exact MH transition. This module trains it during warm-up, in three parts
that all live in the chain's carry (every PyMC chain starts afresh):

1. *HMC warm-up* (``hmc_warmup`` iterations, 200 by default): true-gradient HMC with Stan's
   step-size and diagonal-mass adaptation, on a schedule of its own (``steps/hmc.py``'s
   program, as in ``steps/l2hmc.py``). It gives the fixed whitening x = c + S y in which
   the flow works, and the flow's initial ε (the untrained flow is MALA with that step).
   ``dense_whitening`` ("auto": dense for d ≤ 100): S = cholesky(Σ̂), Σ̂ the covariance of
   the positions from the warm-up's first slow window to its end (pooled over chains
   under the fast driver), shrunk towards its diagonal with weight 5/(n + 5) and then
   Stan's way towards 1e-3 (``whitening.dense_covariance``'s regularisation). A dense S
   undoes rotations that a diagonal one cannot (see "Measured" below for the rotated
   Gaussian). ε starts at HMC's step h rescaled to the densely whitened target,
   h/√λ_min(D^{-1/2} Σ̂ D^{-1/2}) with D HMC's diagonal inverse mass, clipped to
   [h, max(h, d^{-1/6})]. Otherwise (d > 100 or ``dense_whitening=False``) S = √M⁻¹,
   HMC's adapted diagonal, and ε = h. The HMC warm-up itself always uses a diagonal mass.
   A short diagonal HMC warm-up explores a rotated, ill-conditioned target poorly (on the
   20-d rotated Gaussian ~0.1 ESS per iteration: a few dozen effective points for 210
   covariance entries), so the dense whitening is then re-estimated once (see 2.).
2. *Training* (``train_steps`` optimiser steps, 3000 by default): ``ensemble.py``'s loop.
   ``num_walkers`` walkers are the paper's bootstrapped buffer (§3.3). They start at the
   chain's last ``num_walkers`` HMC warm-up positions: draws from N(c, M⁻¹) land far off
   a narrow ridge (whitened SCG: 1 vs 0.045 across it), where the untrained flow accepts
   almost nothing, and 300 training steps from there left a kernel with a bulk ESS of
   0.001 per step. Each optimiser step maximises the paper's objective
   E[min(0, log MH ratio) + β log|det ∂x'/∂z₀|] (``entropy.entropy_objective``; gradients
   through the ∇U terms and log ε) on one proposal per walker, and the walkers then take
   that proposal's exact MH step (no extra gradients). After every step β follows the
   controller ``entropy.beta_update``, log β += rate · (acceptance − target), which holds
   the batch's mean acceptance at ``target_acceptance``. Steps with a non-finite loss,
   gradient or update are rolled back (``ensemble.train_step``). The budget is spread over
   ``tune`` in rounds (``steps.l2hmc.training_rounds``); what a short or open-ended warm-up
   (PyMC 5) leaves is trained when warm-up ends (``ChainProgram.train_pending``).
   *Re-whitening* (dense whitening only, ``rewhiten_steps``, 300 by default, part of the
   budget): during the first ``rewhiten_steps`` optimiser steps the walkers' positions are
   collected every ``REWHITEN_CHUNK`` = 10 steps (64 walkers × 30 looks: ~2000 correlated
   points of exact MH transitions, against ~300 HMC warm-up positions); then the centre and
   dense covariance are re-estimated from them, the networks restart at zero output (MALA;
   networks belong with their whitening), Adam restarts, β is kept, and ε is rescaled to
   ε/√λ_min(L⁻¹Σ̂'L⁻ᵀ) (clipped to [ε, max(ε, d^{-1/6})]): an ε tuned under a poor
   whitening is far too small under a good one. This happens between optimiser steps,
   before any draw, so every transition (walkers' and chains') uses one fixed kernel.
   The pilot's sums live in ``FlowContext.pilot``, so a pilot spanning several training
   rounds keeps them all. Measured (seed 20240601, defaults otherwise): min ESS per MH
   step on the 20-d rotated Gaussian 0.112 without re-whitening → 0.450 with it; 50-d
   ill-conditioned Gaussian 0.077 → 0.328 (there the warm-up's dense estimate is mostly
   noise in 1225 entries).
3. The chain runs the current flow kernel between rounds; the kernel (networks, ε,
   preconditioner) is frozen when warm-up ends, so the draws are MH transitions of one
   fixed kernel: exact whatever was learned.

``pm.sample`` trains one kernel per chain; ``pymc_neural_steps.sample`` trains ONE kernel
for all chains (``pooled_train``): one preconditioner from the pooled HMC estimates and
one ensemble of ``num_walkers`` walkers drawn from all chains.

Defaults, and why (chosen for robustness across targets, not for one of them):
``use_r=False, num_coupling_steps=1``: the cheaper variant, one gradient per transition
(at x', reused as the next transition's gradient at x), where the paper's configuration,
``use_r=True``, costs 4 (2N where the R network places them in the forward flow, 2N in the
reverse) and gave the same ESS per MH step on German credit (below), so 4× fewer ESS per
gradient;
``target_acceptance=0.9`` (``entropy.DEFAULT_TARGET_ACCEPTANCE``; the paper's Gaussian
ESS figures need acceptance near 0.9), ``width=64, depth=2`` tanh MLPs, Adam with the
rate decaying from ``learning_rate`` to ``final_learning_rate``, initial β = 1/d.

Measured (fast driver ``pymc_neural_steps.sample``, 4 chains × 2000 draws after
tune=1000, random_seed=20240601, default options, so dense whitening with re-whitening on
every target below (d ≤ 50); ``python scripts/entropy_efficiency.py scg icg rotated banana
funnel german --draws 2000 --seeds 20240601``, PyMC 6 venv, 2-core machine shared with
other jobs, load average 3.5–3.9, so wall times are pessimistic). ESS: ArviZ rank-normalised,
minimum over parameters; per MH step and per true gradient of the draw phase (the variant
without R spends one gradient per transition, so the two coincide); wall: the whole
``sample`` call (compilation, HMC warm-up, training included); |z|: ``check_exactness``.

    target                       bulk   tail  ESS/MH  ESS/grad  accept  max|z|  wall
    strongly_correlated_gaussian 5705   5461  0.683   0.683     0.78    1.55    15 s
    ill_conditioned_gaussian(50) 2621   3194  0.328   0.328     0.75    3.08    21 s
    rotated_gaussian(20)         3596   4135  0.450   0.450     0.75    2.19    20 s
    banana(1, 0.1, 1)            5703   5647  0.706   0.706     0.77    1.77    15 s
    funnel(20, σ=3)                 5      9  0.0006  0.0006    0.74    1.56*   20 s
    german_credit                3127   3057  0.382   0.382     0.75    2.28    35 s

German credit: 1911 min-ESS per 5000 MH steps (target 3000, paper 3150). In an earlier
version whose pilot kept only the last training round's positions (150 steps; 0.336 per
step), ``use_r=True`` gave the same ESS per step at 4× the gradients, target_acceptance
0.6 / 0.9 gave 0.298 / 0.253, and re-whitening at 1000 steps 0.328: the remaining limit
is the flow, not the whitening. *Funnel: the exactness check FAILS on ESS (5–6) and
R-hat (up to 2.6), not on z. Diagnosed (2026-11-23, seeds 1 and 2): acceptance by v is
0.68–0.90 wherever the chains go, and the flow does learn x's exp(v/2) scale (sd(Δx) /
exp(v/2) ≈ 0.8–1.1 over v in [−6, 2]); what it never learns is the *coordinated* move
that changes v and rescales all 19 x_i with it. Its v steps have sd 0.07–0.23, below
v's conditional sd given x (≈ 0.32), so v random-walks (lag-1 autocorrelation 0.995).
Trained offline on exact funnel draws for 36,000 steps, the squared v jump was still
0.027; a hand-written coordinated proposal (v' = v + a z_v, x' = x exp((v' − v)/2) +
s exp(v'/2) z_x) reached 0.75–3.95 at acceptance 0.64–0.79. A coupling step gives only the
x_i in the other half from v that dependence, and the objective does not pull towards it
(the rescaling adds nothing to the entropy term on average); neither 2–4 coupling steps,
20,000 training steps, 256 walkers, R, diagonal or no whitening, a linear drift term nor a
learned shear changed ESS (5–7), nor did target_acceptance=0.6. It needs a change of
objective or architecture. With ``dense_whitening=False``
(the previous behaviour), same seed: rotated Gaussian bulk ESS 5, max |z| 3.85, exactness
FAILED (the benchmark's ESS 5 / |z| 4.84); German credit bulk 329, 206 per 5000 MH steps.
Dense whitening without re-whitening (``rewhiten_steps=0``): rotated 895 bulk (0.112 per
step), 50-d ill-conditioned 617 (0.077). The slow test's funnel run (8 × 10000 draws, seed
2) fails the exactness check on ESS (32) and R-hat (1.19) with dense whitening, as it does
with ``dense_whitening=False`` (ESS 31, R-hat 1.18).

Why dense up to d = 100 ("auto"): the dense maps cost O(d²) per transition (two
triangular products; at d = 100, 10⁴ flops, comparable to one 64-wide network layer on
3d inputs) and a Cholesky factor once; the estimate needs n ≫ d effective points, which
the re-whitening pilot (~2000 correlated walker positions) supplies up to d ~ 100, while
beyond it the diagonal estimate's d numbers are far better determined than d²/2.
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

from pymc_neural_steps import adaptation, ensemble, whitening
from pymc_neural_steps.kernels import entropy, hmc
from pymc_neural_steps.steps.base import ChainProgram, NeuralStep, StatSpec, pack_stats
from pymc_neural_steps.steps.hmc import HMCCarry, hmc_program
from pymc_neural_steps.steps.l2hmc import training_rounds
from pymc_neural_steps.target import Target, build_layout

__all__ = ["EntropyFlowMC", "TrainedEntropyFlow", "entropy_program"]

HMC_MODE, FLOW_MODE = "hmc", "flow"

# Mean acceptance the β controller holds during training (see the module docstring).
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
    # Training that ran since the previous iteration (0 / NaN when none did):
    StatSpec("training_steps", np.int64),
    StatSpec("training_rollbacks", np.int64),  # steps rejected as non-finite
    StatSpec("training_loss", np.float64),  # mean of −objective over the accepted steps
    StatSpec("training_acceptance", np.float64),  # mean acceptance of the walkers' proposals
    # Forward true gradients of training on this chain's walkers (the backward pass through
    # them is not counted); summed over chains, the total.
    StatSpec("training_grad_evals", np.int64),
    # Wall seconds of training, measured by the driver; a pooled run reports its full time
    # on every chain (the chains wait for it together).
    StatSpec("training_time", np.float64),
)


# "auto" whitens densely up to this dimension. A dense S costs O(d²) per map (two
# triangular products per transition, against the networks' O(d·width)) and its estimate
# needs many more warm-up points than d; both are comfortable below ~100 (see
# ``EntropyFlowMC``'s ``dense_whitening``).
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


class TrainingReport(NamedTuple):
    steps: jax.Array
    rollbacks: jax.Array
    loss: jax.Array
    acceptance: jax.Array
    grad_evals: jax.Array


class EntropyCarry(NamedTuple):
    hmc: HMCCarry  # the chain's state and the HMC warm-up's adaptation
    warmup_iteration: jax.Array
    center_welford: adaptation.WelfordState
    center_estimate: jax.Array
    # Dense whitening: running moments of the HMC warm-up's whole slow phase (count, mean,
    # (d, d) co-moment); a zero-size placeholder for the diagonal whitening.
    cov_welford: tuple
    recent: jax.Array  # (num_walkers, d): the last HMC warm-up positions, the first walkers
    training: ensemble.TrainingState  # params: FlowNetworks; context: FlowContext
    key: jax.Array  # raw key data of the training randomness, set when training starts
    started: jax.Array  # bool: the chain runs the flow kernel
    report: TrainingReport


@dataclass(frozen=True)
class TrainedEntropyFlow:
    """A trained flow kernel, detached from any model: networks, the preconditioner they
    were trained under, and the layout of the model they belong to."""

    networks: entropy.FlowNetworks  # numpy leaves
    center: np.ndarray
    inverse_mass: np.ndarray
    beta: float
    layout: dict
    options: dict
    report: dict = field(default_factory=dict)

    @property
    def step_size(self) -> float:
        return float(np.exp(self.networks.log_step_size))


def _empty_report(dtype=jnp.float64) -> TrainingReport:
    zero = jnp.zeros((), jnp.int64)
    nan = jnp.full((), jnp.nan, dtype)
    return TrainingReport(zero, zero, nan, nan, zero)


def _add_reports(a: TrainingReport, b: TrainingReport) -> TrainingReport:
    """Two pieces of training reported together (NaN-aware, step-weighted means)."""

    def mean(x, y):
        wx, wy = a.steps - a.rollbacks, b.steps - b.rollbacks
        x0, y0 = jnp.where(wx > 0, x, 0.0), jnp.where(wy > 0, y, 0.0)
        total = wx + wy
        return jnp.where(total > 0, (wx * x0 + wy * y0) / jnp.maximum(total, 1), jnp.nan)

    return TrainingReport(
        a.steps + b.steps,
        a.rollbacks + b.rollbacks,
        mean(a.loss, b.loss),
        mean(a.acceptance, b.acceptance),
        a.grad_evals + b.grad_evals,
    )


def _preconditioner(context: FlowContext) -> entropy.Preconditioner:
    return entropy.Preconditioner(context.center, context.scale)


def _dense_welford_init(dim: int, dense: bool):
    n = dim if dense else 0
    return (jnp.zeros((), jnp.float64), jnp.zeros(n, jnp.float64), jnp.zeros((n, n), jnp.float64))


def _dense_welford_update(state, x):
    count, mean, m2 = state
    count = count + 1.0
    delta = x - mean
    mean = mean + delta / count
    return count, mean, m2 + jnp.outer(delta, x - mean)


def _dense_step_size(step_size, diagonal_inverse_mass, covariance):
    """The flow's initial ε under the dense whitening, from HMC's step under the diagonal.

    HMC's step h is limited by the narrowest direction of the diagonally whitened target,
    of standard deviation √λ_min(D^{-1/2} Σ D^{-1/2}); the densely whitened target has all
    standard deviations near 1, so the same relative step is h / √λ_min. Clipped to
    [h, max(h, d^{-1/6})] (MALA's scaling for N(0, I)); training adapts ε from there.
    """
    dim = covariance.shape[-1]
    d_half = 1.0 / jnp.sqrt(diagonal_inverse_mass)
    correlation = covariance * d_half[:, None] * d_half[None, :]
    lam_min = jnp.maximum(jnp.linalg.eigvalsh(correlation)[0], 1e-12)
    upper = jnp.maximum(step_size, dim ** (-1.0 / 6.0))
    return jnp.clip(step_size / jnp.sqrt(lam_min), step_size, upper)


def training_grads_per_walker(nets: entropy.FlowNetworks) -> int:
    """Forward true gradients of one objective evaluation at one walker.

    With R: the 2N of the forward flow and the 2N of the reverse (log p at x and x' come
    without gradient). Without R: ∇log p at x and at x'.
    """
    return entropy.grad_evals_per_transition(nets)[0] if nets.use_r else 2


def entropy_program(
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
    trained: TrainedEntropyFlow | None = None,
) -> ChainProgram:
    """The ``ChainProgram`` of EntropyFlowMC on ``target`` (see the module docstring).

    With ``trained`` the chain runs that kernel from the first iteration: no HMC warm-up,
    no training, nothing adapted (warm-up iterations are ordinary transitions).
    """
    dim = target.dim
    dense = resolve_dense_whitening(dense_whitening, dim)
    if trained is not None:
        dense = np.ndim(trained.inverse_mass) == 2
        train_steps = 0
        template = jax.tree.map(jnp.asarray, trained.networks)
    else:
        # Masks are static and the initial hidden weights fixed: built once, on the host.
        template = entropy.init_networks(
            jax.random.key(0), dim, num_coupling_steps, width, depth, step_size=1.0, use_r=use_r
        )
    beta0 = 1.0 / dim if initial_beta is None else float(initial_beta)
    hmc_part = hmc_program(target, target_accept=target_accept, max_steps=max_hmc_steps)
    codes = adaptation.window_codes(hmc_warmup)
    hmc_codes = jnp.asarray(codes, jnp.int8)
    slow = np.flatnonzero(codes >= adaptation.SLOW)
    first_slow = int(slow[0]) if slow.size else hmc_warmup
    per_round, round_ends = training_rounds(train_steps, hmc_warmup, None)
    optimizer = ensemble.adam_with_decay(
        learning_rate, train_steps, final_fraction=final_learning_rate / learning_rate
    )
    grads_per_walker = training_grads_per_walker(template)
    # Re-whitening from the walkers (dense only, and only if training goes on after it).
    use_pilot = dense and trained is None and 0 < rewhiten_steps < train_steps
    pilot_steps = int(rewhiten_steps) if use_pilot else 0
    n_grad, n_logp = entropy.grad_evals_per_transition(template)

    def logdensity_fn(extras):
        return lambda x: target.logdensity(x, *extras)

    # --- the training recipe ----------------------------------------------------------
    def objective(nets, key, walkers, context):
        return entropy.entropy_objective(
            nets,
            key,
            walkers,
            logdensity_fn(context.extras),
            context.beta,
            preconditioner=_preconditioner(context),
        )

    def advance(key, nets, walkers, aux, context):
        # The objective's proposals came from the current networks: accepting them with
        # the MH probability is one exact transition of the current kernel per walker.
        log_u = jnp.log(jax.random.uniform(key, walkers.shape[:1], walkers.dtype))
        accept = log_u < aux.log_ratio
        return jnp.where(accept[:, None], aux.proposal, walkers)

    def adapt(context, aux):
        beta = entropy.beta_update(context.beta, aux.mean_acceptance, target_acceptance, beta_rate)
        return context._replace(beta=beta)

    trainer = ensemble.Trainer(
        objective, advance, optimizer, adapt=adapt, monitor=lambda aux: aux.mean_acceptance
    )

    def empty_pilot():
        n = dim if pilot_steps else 0
        return (jnp.zeros((), jnp.float64), jnp.zeros(n), jnp.zeros((n, n)))

    def fresh_training(walkers, center, inverse_mass, step_size, extras):
        log_eps = jnp.log(jnp.asarray(step_size, template.log_step_size.dtype))
        nets = eqx.tree_at(lambda n: n.log_step_size, template, log_eps)
        scale = whitening.scale_from_inverse_mass(inverse_mass)
        beta = jnp.asarray(beta0, jnp.float64)
        context = FlowContext(center, inverse_mass, scale, beta, extras, empty_pilot())
        return ensemble.init(trainer, nets, walkers, context)

    # --- one chain ----------------------------------------------------------------------
    def init(position, extras):
        hmc_carry = hmc_part.init(position, extras)
        position = hmc_carry.state.position
        if trained is None:
            walkers = jnp.broadcast_to(position, (num_walkers, dim))
            unit = jnp.eye(dim) if dense else jnp.ones(dim)
            training = fresh_training(walkers, position, unit, 1.0, tuple(extras))
        else:
            context = FlowContext(
                jnp.asarray(trained.center),
                jnp.asarray(trained.inverse_mass),
                whitening.scale_from_inverse_mass(jnp.asarray(trained.inverse_mass)),
                jnp.asarray(trained.beta, jnp.float64),
                tuple(extras),
                empty_pilot(),
            )
            walkers = jnp.broadcast_to(context.center, (num_walkers, dim))
            training = ensemble.init(trainer, template, walkers, context)
        return EntropyCarry(
            hmc=hmc_carry,
            warmup_iteration=jnp.zeros((), jnp.int64),
            center_welford=adaptation.welford_init(dim),
            center_estimate=position,
            cov_welford=_dense_welford_init(dim, dense),
            recent=jnp.broadcast_to(position, (num_walkers, dim)),
            training=training,
            key=jax.random.key_data(jax.random.key(0)),
            started=jnp.asarray(trained is not None),
            report=_empty_report(),
        )

    def refresh(carry, position, extras):
        hmc_carry = hmc_part.refresh(carry.hmc, position, extras)
        training = carry.training
        if extras:
            training = training._replace(context=training.context._replace(extras=tuple(extras)))
        return carry._replace(hmc=hmc_carry, training=training)

    def hmc_iteration(key, carry, extras):
        code = hmc_codes[jnp.minimum(carry.warmup_iteration, hmc_warmup - 1)]
        hmc_carry, position, stats = hmc_part.tune(key, carry.hmc, code, extras)
        collect = code >= adaptation.SLOW
        updated = adaptation.welford_update(carry.center_welford, position)
        welford = jax.tree.map(lambda a, b: jnp.where(collect, a, b), updated, carry.center_welford)
        window_end = code == adaptation.SLOW_END
        center = jnp.where(window_end, welford.mean, carry.center_estimate)
        welford = jax.tree.map(
            lambda a, b: jnp.where(window_end, a, b), adaptation.welford_init(dim), welford
        )
        cov_welford = carry.cov_welford
        if dense:
            # From the first slow window to the end of the HMC warm-up (never reset): more
            # points for d² entries than the last window alone.
            updated = _dense_welford_update(cov_welford, position)
            collect_cov = carry.warmup_iteration >= first_slow
            cov_welford = jax.tree.map(
                lambda a, b: jnp.where(collect_cov, a, b), updated, cov_welford
            )
        carry = carry._replace(
            hmc=hmc_carry,
            warmup_iteration=carry.warmup_iteration + 1,
            cov_welford=cov_welford,
            center_welford=welford,
            center_estimate=center,
            recent=carry.recent.at[carry.warmup_iteration % num_walkers].set(position),
        )
        nan = jnp.nan
        # COMMON_STATS, then HMC's step_size and n_steps (HMC_STATS[2:4]).
        stats = jnp.concatenate(
            [stats[:4], stats[6:8], pack_stats(0, nan, nan, nan, nan, False)]
        )
        return carry, position, stats

    def flow_iteration(key, carry, extras):
        context = carry.training.context
        nets = carry.training.params
        kernel = entropy.build_kernel(logdensity_fn(extras))
        s = carry.hmc.state
        state, info = kernel(
            key,
            entropy.EntropyState(s.position, s.logdensity, s.gradient),
            nets,
            _preconditioner(context),
        )
        entropy_estimate = 0.5 * dim * math.log(2 * math.pi * math.e) + info.log_det
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

    def iterate(key, carry, extras, mode):
        step = hmc_iteration if mode == HMC_MODE else flow_iteration
        new_carry, position, stats = step(key, carry, extras)
        r = carry.report
        training_stats = pack_stats(
            r.steps, r.rollbacks, r.loss, r.acceptance, r.grad_evals, 0.0  # time: the driver's
        )
        stats = jnp.concatenate([stats, training_stats])
        return new_carry._replace(report=_empty_report()), position, stats

    def tune(key, carry, code, extras, mode=HMC_MODE):
        return iterate(key, carry, extras, mode)

    def draw(key, carry, extras, mode=FLOW_MODE):
        return iterate(key, carry, extras, mode)

    # --- training: one chain -------------------------------------------------------------
    def chain_estimates(carry):
        """(centre, diagonal inverse mass, HMC step, dense moments (count, mean, cov))."""
        step_size, inverse_mass = adaptation.warmup_final(carry.hmc.warmup)
        count, mean, m2 = carry.cov_welford
        cov = m2 / jnp.maximum(count - 1.0, 1.0)
        return carry.center_estimate, inverse_mass, step_size, (count, mean, cov)

    def whitening_from(center, inverse_mass, step_size, count, cov):
        """The fixed whitening (centre, Σ) and the flow's initial ε."""
        if not dense:
            return center, inverse_mass, step_size
        # Too few points (a warm-up without a slow phase): the diagonal estimate, densely.
        cov = jnp.where(count >= 2, whitening.regularise_covariance(cov, count), jnp.diag(inverse_mass))
        return center, cov, _dense_step_size(step_size, inverse_mass, cov)

    def start_chain(key, carry):
        center, inverse_mass, step_size, (count, _, cov) = chain_estimates(carry)
        center, inverse_mass, step_size = whitening_from(
            center, inverse_mass, step_size, count, cov
        )
        training = fresh_training(
            carry.recent, center, inverse_mass, step_size, carry.training.context.extras
        )
        return carry._replace(
            training=training, key=jax.random.key_data(key), started=jnp.ones((), bool)
        )

    def as_report(summary, walkers_per_chain):
        return TrainingReport(
            steps=summary.num_steps,
            rollbacks=summary.num_rejected,
            loss=summary.mean_loss,
            acceptance=summary.mean_monitor,
            grad_evals=summary.num_steps * walkers_per_chain * grads_per_walker,
        )

    def rewhiten(training, moments):
        """Re-estimate the dense whitening from the walkers' pilot positions; restart the
        networks (zero output: MALA) with ε rescaled to the new whitening. Called between
        optimiser steps, so every walker transition uses one fixed kernel."""
        count, total, outer = moments
        context = training.context
        mean_dev = total / count
        cov = (outer - count * jnp.outer(mean_dev, mean_dev)) / jnp.maximum(count - 1.0, 1.0)
        cov = whitening.regularise_covariance(0.5 * (cov + cov.T), count)
        center = context.center + mean_dev
        scale = whitening.scale_from_inverse_mass(cov)
        # The new covariance seen through the old whitening: its smallest eigenvalue says
        # how much larger a step the new whitening affords (as in _dense_step_size).
        old = context.scale
        seen = jax.scipy.linalg.solve_triangular(
            old, jax.scipy.linalg.solve_triangular(old, cov, lower=True).T, lower=True
        )
        lam_min = jnp.maximum(jnp.linalg.eigvalsh(0.5 * (seen + seen.T))[0], 1e-12)
        eps = training.params.step_size
        eps = jnp.clip(eps / jnp.sqrt(lam_min), eps, jnp.maximum(eps, dim ** (-1.0 / 6.0)))
        nets = eqx.tree_at(lambda n: n.log_step_size, template, jnp.log(eps))
        context = context._replace(center=center, inverse_mass=cov, scale=scale)
        fresh = ensemble.init(trainer, nets, training.walkers, context)
        ok = jnp.all(jnp.isfinite(scale)) & jnp.isfinite(eps) & (count >= 2)
        fresh = fresh._replace(
            num_steps=training.num_steps, num_rejected=training.num_rejected, loss=training.loss
        )
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), fresh, training)

    def run_round(key_data, training, walkers_per_chain):
        steps = jnp.clip(train_steps - training.num_steps, 0, per_round)
        key = jax.random.wrap_key_data(key_data)
        if not pilot_steps:
            training, summary = ensemble.train(trainer, training, key, steps)
            return training, as_report(summary, walkers_per_chain)
        # Chunks of REWHITEN_CHUNK steps; until ``pilot_steps`` optimiser steps have run,
        # the walkers' positions after each chunk are collected, and at pilot_steps the
        # whitening is re-estimated from them (``rewhiten``). Chunking does not change the
        # randomness (ensemble.train keys steps by the running count).
        end = training.num_steps + steps

        def body(carry):
            training, report = carry
            moments = training.context.pilot
            k = jnp.minimum(REWHITEN_CHUNK, end - training.num_steps)
            to_pilot = pilot_steps - training.num_steps
            k = jnp.where(to_pilot > 0, jnp.minimum(k, to_pilot), k)
            training, summary = ensemble.train(trainer, training, key, k)
            report = _add_reports(report, as_report(summary, walkers_per_chain))
            w = training.walkers - training.context.center
            collect = training.num_steps <= pilot_steps
            moments = jax.tree.map(
                lambda m, new: jnp.where(collect, m + new, m),
                moments,
                (jnp.asarray(w.shape[0], jnp.float64), jnp.sum(w, 0), w.T @ w),
            )
            # The sums are relative to the centre, which changes only at the re-whitening.
            training = training._replace(context=training.context._replace(pilot=moments))
            training = jax.lax.cond(
                training.num_steps == pilot_steps,
                rewhiten,
                lambda t, m: t,
                training,
                moments,
            )
            return training, report

        return jax.lax.while_loop(
            lambda c: c[0].num_steps < end, body, (training, _empty_report())
        )

    def train(key, carry):
        carry = jax.lax.cond(carry.started, lambda c: c, lambda c: start_chain(key, c), carry)
        training, report = run_round(carry.key, carry.training, num_walkers)
        return carry._replace(training=training, report=_add_reports(carry.report, report))

    # --- training: all chains, one kernel ---------------------------------------------------
    def pooled_start(key, carry):
        centers, inverse_masses, step_sizes, moments = jax.vmap(chain_estimates)(carry)
        # One preconditioner for all chains: the moments of the mixture of the estimates.
        center = jnp.mean(centers, axis=0)
        inverse_mass = jnp.mean(inverse_masses + (centers - center) ** 2, axis=0)
        step_size = jnp.exp(jnp.mean(jnp.log(step_sizes)))
        counts, means, covs = moments
        if dense:
            # Pooled over chains: the covariance of all chains' slow-phase positions.
            count = jnp.sum(counts)
            w = counts / jnp.maximum(count, 1.0)
            mean = jnp.sum(w[:, None] * means, axis=0)
            dev = means - mean
            norm = jnp.maximum(count - 1.0, 1.0)
            within = jnp.einsum("c,cij->ij", (counts - 1.0) / norm, covs)
            between = jnp.einsum("c,ci,cj->ij", counts / norm, dev, dev)
            center, inverse_mass, step_size = whitening_from(
                center, inverse_mass, step_size, count, within + between
            )
        # The shared ensemble takes the first k walkers of each chain (``pooled_train``):
        # reorder each chain's recent positions so that those k are spread over its last
        # num_walkers HMC iterations rather than k consecutive, correlated ones.
        chains = carry.started.shape[0]
        walkers = carry.recent[:, _spread_order(num_walkers, _shared_per_chain(num_walkers, chains))]
        training = jax.vmap(
            lambda w, extras: fresh_training(w, center, inverse_mass, step_size, extras)
        )(walkers, carry.training.context.extras)
        return carry._replace(
            training=training,
            key=jnp.broadcast_to(jax.random.key_data(key), carry.key.shape),
            started=jnp.ones_like(carry.started),
        )

    def pooled_train(key, carry):
        chains = carry.started.shape[0]
        carry = jax.lax.cond(carry.started[0], lambda c: c, lambda c: pooled_start(key, c), carry)
        # The shared ensemble: the first k walkers of every chain, about num_walkers in all.
        k = _shared_per_chain(num_walkers, chains)
        batched = carry.training
        shared = jax.tree.map(lambda a: a[0], batched)
        shared = shared._replace(walkers=batched.walkers[:, :k].reshape(chains * k, dim))
        shared, report = run_round(carry.key[0], shared, k)
        walkers = batched.walkers.at[:, :k].set(shared.walkers.reshape(chains, k, dim))
        training = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (chains, *jnp.shape(a))),
            shared._replace(walkers=jnp.zeros(())),
        )
        context = training.context._replace(extras=batched.context.extras)
        training = training._replace(walkers=walkers, context=context)
        reports = jax.vmap(_add_reports, (0, None))(carry.report, report)
        return carry._replace(training=training, report=reports)

    def train_pending(carry):
        started = np.asarray(carry.started)
        done = np.asarray(carry.training.num_steps)
        return bool((~started).any() or (done < train_steps).any())

    def train_at(iteration, num_tune):
        if num_tune is None:
            return iteration in round_ends
        return iteration in training_rounds(train_steps, hmc_warmup, num_tune)[1]

    def mode_of(carry):
        return FLOW_MODE if np.asarray(carry.started).all() else HMC_MODE

    common = dict(
        init=init,
        tune=tune,
        end_tune=lambda carry: carry,  # frozen by no longer training it
        draw=draw,
        refresh=refresh,
        stat_specs=EntropyFlowMC.stat_specs(),
        mode_of=mode_of,
    )
    if trained is not None:
        return ChainProgram(**common)
    return ChainProgram(
        **common,
        train=train,
        pooled_train=pooled_train,
        train_at=train_at,
        train_pending=train_pending,
    )


class EntropyFlowMC(NeuralStep):
    """The proposal-entropy neural sampler (Li, Chen & Sommer 2021), trained in warm-up.

    Parameters
    ----------
    vars
        Value variables to sample (all continuous ones by default).
    num_coupling_steps
        N, coupling steps of the flow. With R a transition costs 4N true gradients and one
        log density; without R one gradient.
    use_r
        Use the R networks that choose where ∇U is evaluated (the paper's sampler); False
        is the cheaper variant with the gradient only at x and x'.
    num_walkers
        Size of the training buffer: per chain under ``pm.sample``, shared by all chains
        under ``pymc_neural_steps.sample``.
    train_steps
        Training budget in optimiser steps, whatever the length of ``tune``.
    learning_rate, final_learning_rate
        Adam's rate, decayed exponentially from the first to the second over the budget.
    target_acceptance
        Mean acceptance the β controller holds during training (lower it, e.g. to 0.6–0.7,
        for targets where a high acceptance forces tiny proposals).
    beta_rate, initial_beta
        Gain of the β controller (log β += rate · (acceptance − target)) and β's start
        (default 1/d).
    hmc_warmup
        Iterations of true-gradient HMC warm-up that set the preconditioner and initial ε.
    width, depth
        Hidden layers of the networks.
    target_accept
        Acceptance rate the HMC warm-up adapts its step size to.
    dense_whitening
        ``"auto"`` (default: dense when d ≤ ``DENSE_WHITENING_MAX_DIM`` = 100), True or
        False. Dense: the flow runs in y = L⁻¹(x − c), L the Cholesky factor of a dense
        covariance estimated from the HMC warm-up's slow phase (pooled over chains under
        ``pymc_neural_steps.sample``); it undoes correlations and rotations. Diagonal:
        y = (x − c)/s with HMC's adapted variances. Either is fixed before the draws.
    rewhiten_steps
        Dense whitening only: after this many optimiser steps (part of ``train_steps``;
        0 disables) re-estimate the whitening from the walkers' positions and restart
        the networks under it (module docstring, 2.).
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up ``step.trained`` holds the ``TrainedEntropyFlow`` (the last chain's under
    ``pm.sample`` with ``cores=1``; the shared one under ``pymc_neural_steps.sample``);
    ``save`` writes it, ``EntropyFlowMC.load`` / ``from_trained`` sample with it.
    """

    name = "entropyflow"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = ENTROPY_STATS

    def __init__(
        self,
        vars=None,  # noqa: A002
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
        dense_whitening="auto",
        rewhiten_steps: int = 300,
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        if num_coupling_steps < 1:
            raise ValueError(f"num_coupling_steps must be at least 1, got {num_coupling_steps}")
        if num_walkers < 1:
            raise ValueError(f"num_walkers must be at least 1, got {num_walkers}")
        if train_steps < 0:
            raise ValueError(f"train_steps must not be negative, got {train_steps}")
        if hmc_warmup < 1:
            raise ValueError(f"hmc_warmup must be at least 1, got {hmc_warmup}")
        if not 0.0 < target_acceptance < 1.0:
            raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if learning_rate <= 0 or final_learning_rate <= 0:
            raise ValueError("learning rates must be positive")
        if beta_rate < 0 or (initial_beta is not None and initial_beta <= 0):
            raise ValueError("beta_rate must not be negative and initial_beta must be positive")
        if width < 1 or depth < 1:
            raise ValueError("width and depth must be positive")
        resolve_dense_whitening(dense_whitening, 1)  # validates the option
        if rewhiten_steps < 0:
            raise ValueError(f"rewhiten_steps must not be negative, got {rewhiten_steps}")
        self.options = dict(
            num_coupling_steps=int(num_coupling_steps),
            use_r=bool(use_r),
            num_walkers=int(num_walkers),
            train_steps=int(train_steps),
            learning_rate=float(learning_rate),
            final_learning_rate=float(final_learning_rate),
            target_acceptance=float(target_acceptance),
            beta_rate=float(beta_rate),
            initial_beta=None if initial_beta is None else float(initial_beta),
            hmc_warmup=int(hmc_warmup),
            width=int(width),
            depth=int(depth),
            target_accept=float(target_accept),
            dense_whitening=dense_whitening if dense_whitening == "auto" else bool(dense_whitening),
            rewhiten_steps=int(rewhiten_steps),
        )
        self.trained: TrainedEntropyFlow | None = None
        self._trained_start: TrainedEntropyFlow | None = None
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)

    def _program(self, target: Target) -> ChainProgram:
        return entropy_program(target, trained=self._trained_start, **self.options)

    def _tuned(self, carry: Any, *, batched: bool) -> None:
        training = jax.device_get(carry.training)
        if batched:
            training = jax.tree.map(lambda a: a[0], training)
        steps, rejected = int(training.num_steps), int(training.num_rejected)
        if steps and rejected == steps:
            warnings.warn(
                f"EntropyFlowMC: all {steps} training steps gave a non-finite objective or "
                "gradient and were rolled back; the kernel is the untrained one (MALA). The "
                "draws are exact either way. Try a smaller learning_rate.",
                UserWarning,
                stacklevel=2,
            )
        if self._trained_start is not None:
            self.trained = self._trained_start
            return
        self.trained = TrainedEntropyFlow(
            networks=jax.tree.map(np.asarray, training.params),
            center=np.asarray(training.context.center),
            inverse_mass=np.asarray(training.context.inverse_mass),
            beta=float(training.context.beta),
            layout=self.layout.fingerprint(),
            options=dict(self.options),
            report={
                "train_steps": steps,
                "rollbacks": rejected,
                "final_loss": _json_float(training.loss),
            },
        )

    # --- reuse, save and load --------------------------------------------------------------
    @classmethod
    def from_trained(
        cls, source: EntropyFlowMC | TrainedEntropyFlow, vars=None, *, model=None, **options  # noqa: A002
    ) -> EntropyFlowMC:
        """An EntropyFlowMC for ``model`` that samples with ``source``'s trained kernel.

        ``model`` must have the parameter layout the kernel was trained on
        (``LayoutMismatchError`` names the first variable that differs). Warm-up
        iterations run the loaded kernel unchanged (no adaptation, no training).
        """
        if isinstance(source, EntropyFlowMC):
            trained = source.trained or source._trained_start
        else:
            trained = source
        if trained is None:
            raise ValueError(
                "This EntropyFlowMC step holds no trained kernel: it has not finished a "
                "warm-up in this process (pm.sample with cores=1, or "
                "pymc_neural_steps.sample), nor was it loaded."
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
                "Nothing to save: this EntropyFlowMC step has not finished a warm-up in this "
                "process."
            )
        nets = trained.networks
        first = nets.halves[0].sqt
        io.save_kernel(
            path,
            kind="EntropyFlowMC",
            arrays={
                "networks": nets,
                "center": trained.center,
                "inverse_mass": trained.inverse_mass,
            },
            layout=trained.layout,
            metadata={
                "network": {
                    "dim": int(nets.dim),
                    "num_coupling_steps": int(nets.num_coupling_steps),
                    "width": int(first.weights[0].shape[0]),
                    "depth": len(first.weights) - 1,
                    "activation": first.activation,
                    "use_r": bool(nets.use_r),
                    "masks": [list(m) for m in nets.masks],
                },
                "beta": trained.beta,
                "dense_whitening": bool(np.ndim(trained.inverse_mass) == 2),
                "options": trained.options,
                "report": trained.report,
            },
        )

    @classmethod
    def load(cls, path, vars=None, *, model=None, **options) -> EntropyFlowMC:  # noqa: A002
        """An EntropyFlowMC for ``model`` from a directory written by ``save``.

        Refused with ``LayoutMismatchError`` naming the variable if ``model``'s layout
        differs from the saved one; otherwise as ``from_trained``.
        """
        from pymc_neural_steps import io

        layout, metadata = io.read_for_model(path, "EntropyFlowMC", model, vars)
        shape = metadata["network"]
        dim = shape["dim"]
        generic = entropy.init_networks(
            jax.random.key(0),
            dim,
            shape["num_coupling_steps"],
            shape["width"],
            shape["depth"],
            use_r=shape["use_r"],
            activation=shape["activation"],
        )
        template = entropy.FlowNetworks(
            halves=generic.halves,
            log_step_size=generic.log_step_size,
            masks=tuple(tuple(bool(b) for b in m) for m in shape["masks"]),
            use_r=bool(shape["use_r"]),
        )
        arrays = io.load_arrays(
            path,
            {
                "networks": template,
                "center": np.zeros(dim),
                "inverse_mass": np.zeros((dim, dim) if metadata.get("dense_whitening") else dim),
            },
            metadata,
        )
        trained = TrainedEntropyFlow(
            networks=jax.tree.map(np.asarray, arrays["networks"]),
            center=np.asarray(arrays["center"]),
            inverse_mass=np.asarray(arrays["inverse_mass"]),
            beta=float(metadata.get("beta", 1.0)),
            layout=metadata["layout"],
            options=dict(metadata.get("options") or {}),
            report=dict(metadata.get("report") or {}),
        )
        return cls.from_trained(trained, vars, model=model, **options)


def _shared_per_chain(num_walkers: int, chains: int) -> int:
    return max(1, -(-num_walkers // chains))


def _spread_order(num_walkers: int, k: int) -> np.ndarray:
    """A permutation of range(num_walkers) whose first k entries are evenly strided."""
    stride = max(1, num_walkers // k)
    return np.argsort(np.arange(num_walkers) % stride, kind="stable")


# Settings that describe the kernel itself and travel with it.
_KERNEL_OPTIONS = frozenset({"num_coupling_steps", "use_r", "width", "depth"})


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
