"""NeuTraHMC's warm-up program: HMC warm-up, the transport map fitted by reverse KL, frozen.

Hoffman et al. (2019): a bijection x = T(z) (``kernels/transport.py``) is fitted to the
posterior by minimising KL(q_T ‖ p) from base draws, and HMC runs on the pull-back π_z.
The skeleton (HMC warm-up, rounds of training, pooling over chains, the gate, freezing) is
``programs/learned.py``'s; this module holds what is the map's own, each a function:

* the training step's objective (``map_objective``): the reverse KL of the map on fresh
  base draws, and, with the map's parameters held fixed, one latent HMC transition of
  every walker (so the walkers follow the current kernel, as the gate's pilots start from
  them);
* the latent step size's controller (``adapt_step_size``): log ε += rate · (acceptance −
  target) on the walkers' transitions, written into the map at the end of every round;
* the whitening T starts from: the HMC warm-up's centre and standard deviations.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation, ensemble
from pymc_neural_steps.kernels import transport
from pymc_neural_steps.programs import learned
from pymc_neural_steps.programs.base import COMMON_STATS, ChainProgram, pack_stats
from pymc_neural_steps.programs.gate import Gate, undecided
from pymc_neural_steps.programs.hmc import HMC_STATS, HMCCarry, hmc_program, jittered_num_steps
from pymc_neural_steps.programs.learned import TrainingReport
from pymc_neural_steps.target import Target

__all__ = [
    "LATENT_MODE",
    "TRANSPORT_STATS",
    "MapContext",
    "TransportCarry",
    "map_objective",
    "transport_program",
]

LATENT_MODE = "latent"

TRANSPORT_STATS = HMC_STATS + learned.TRAINING_STATS

# Gain of the latent step size's controller (per optimiser step).
STEP_SIZE_RATE = 0.05


class MapContext(NamedTuple):
    """What training carries besides the map: the whitening, the walkers' step size, the
    true gradients spent so far, the extras."""

    center: jax.Array
    inverse_mass: jax.Array  # (d,): the whitening's variances
    log_step_size: jax.Array
    grad_evals: jax.Array
    extras: tuple

    @property
    def whitening(self) -> transport.Whitening:
        return transport.Whitening(self.center, jnp.sqrt(self.inverse_mass))


class TransportCarry(NamedTuple):
    hmc: HMCCarry  # the chain's state and the HMC warm-up's adaptation
    warmup_iteration: jax.Array
    center_welford: adaptation.WelfordState
    center_estimate: jax.Array
    recent: jax.Array  # (num_walkers, d): the last HMC warm-up positions, the first walkers
    training: ensemble.TrainingState  # params: TransportMap; context: MapContext
    key: jax.Array  # raw key data of the training randomness, set when training starts
    started: jax.Array
    report: TrainingReport
    gate: Gate


class WalkerMoves(NamedTuple):
    walkers: jax.Array
    mean_acceptance: jax.Array
    grad_evals: jax.Array
    kept: jax.Array  # base draws with a finite log density


class TransportSettings(NamedTuple):
    dim: int
    num_walkers: int
    num_draws: int  # base draws per optimiser step
    train_steps: int
    per_round: int
    target_accept: float
    path_length: float
    max_steps: int
    hmc_warmup: int
    logdensity: Any  # (x, *extras) -> log p(x)
    hmc_part: ChainProgram
    hmc_codes: jax.Array
    template: transport.TransportMap
    trainer: ensemble.Trainer | None = None

    def logdensity_fn(self, extras):
        return lambda x: self.logdensity(x, *extras)


# --------------------------------------------------------------------------- training recipe


def latent_transition(settings: TransportSettings, key, state, flow, whitening, extras):
    """One latent HMC transition with the map's step size and a jittered path length."""
    key_steps, key_kernel = jax.random.split(key)
    num_steps = jittered_num_steps(
        key_steps, jnp.exp(flow.log_step_size), settings.path_length, settings.max_steps
    )
    kernel = transport.build_kernel(settings.logdensity_fn(extras))
    return kernel(key_kernel, state, flow, whitening, num_steps)


def move_walkers(settings: TransportSettings, key, flow, walkers, context: MapContext):
    """Every walker one latent HMC transition (at the context's step size); returns
    (positions, mean acceptance, true gradients spent)."""
    flow = eqx.tree_at(lambda f: f.log_step_size, flow, context.log_step_size)
    logdensity = settings.logdensity_fn(context.extras)

    def one(k, x):
        state = transport.hmc.HMCState(x, *jax.value_and_grad(logdensity)(x))
        state, info = latent_transition(settings, k, state, flow, context.whitening,
                                        context.extras)
        return state.position, info.acceptance_rate, info.n_grad_evals + 1

    keys = jax.random.split(key, walkers.shape[0])
    positions, acceptance, grads = jax.vmap(one)(keys, walkers)
    return positions, jnp.mean(acceptance), jnp.sum(grads)


def map_objective(settings: TransportSettings, flow, key, walkers, context: MapContext):
    """The reverse KL of the map on fresh base draws; the walkers' moves ride along in
    ``aux`` (computed with the map held fixed: they carry no gradient)."""
    key_kl, key_walkers = jax.random.split(key)
    loss, kept = transport.reverse_kl(
        flow, key_kl, settings.num_draws, settings.logdensity_fn(context.extras),
        context.whitening,
    )
    positions, acceptance, grads = move_walkers(
        settings, key_walkers, jax.lax.stop_gradient(flow), walkers, context
    )
    return loss, WalkerMoves(positions, acceptance, grads + settings.num_draws, kept)


def advance_walkers(key, flow, walkers, aux: WalkerMoves, context):
    return aux.walkers


def adapt_step_size(settings: TransportSettings, context: MapContext, aux: WalkerMoves):
    log_step = context.log_step_size + STEP_SIZE_RATE * (
        aux.mean_acceptance - settings.target_accept
    )
    log_step = jnp.where(jnp.isfinite(log_step), log_step, context.log_step_size)
    return context._replace(log_step_size=log_step, grad_evals=context.grad_evals + aux.grad_evals)


def make_trainer(settings: TransportSettings, learning_rate, final_learning_rate):
    optimizer = ensemble.adam_with_decay(
        learning_rate, settings.train_steps, final_fraction=final_learning_rate / learning_rate
    )
    return ensemble.Trainer(
        partial(map_objective, settings),
        advance_walkers,
        optimizer,
        adapt=partial(adapt_step_size, settings),
        monitor=lambda aux: aux.mean_acceptance,
    )


def fresh_training(settings: TransportSettings, walkers, center, inverse_mass, step_size, extras):
    """The untrained map (the whitening alone: latent HMC is HMC with mass 1/Σ)."""
    log_step = jnp.log(jnp.asarray(step_size, jnp.float64))
    flow = eqx.tree_at(lambda f: f.log_step_size, settings.template, log_step)
    context = MapContext(center, inverse_mass, log_step, jnp.zeros((), jnp.int64), extras)
    return ensemble.init(settings.trainer, flow, walkers, context)


def run_round(settings: TransportSettings, key_data, training, state, walkers_per_chain):
    """One training round; the controller's step size then goes into the map."""
    steps = jnp.clip(settings.train_steps - training.num_steps, 0, settings.per_round)
    spent = training.context.grad_evals
    training, summary = ensemble.train(
        settings.trainer, training, jax.random.wrap_key_data(key_data), steps
    )
    flow = eqx.tree_at(lambda f: f.log_step_size, training.params,
                       training.context.log_step_size)
    report = learned.summary_report(summary, training.context.grad_evals - spent)
    return training._replace(params=flow), state, report


# --------------------------------------------------------------------------- one chain


def init_carry(settings: TransportSettings, trained, position, extras) -> TransportCarry:
    dim, num_walkers = settings.dim, settings.num_walkers
    hmc_carry = settings.hmc_part.init(position, extras)
    position = hmc_carry.state.position
    walkers = jnp.broadcast_to(position, (num_walkers, dim))
    if trained is None:
        training = fresh_training(settings, walkers, position, jnp.ones(dim), 1.0, tuple(extras))
    else:
        flow = jax.tree.map(jnp.asarray, trained.networks)
        context = MapContext(jnp.asarray(trained.center), jnp.asarray(trained.inverse_mass),
                             flow.log_step_size, jnp.zeros((), jnp.int64), tuple(extras))
        training = ensemble.init(settings.trainer, flow, walkers, context)
    return TransportCarry(
        hmc=hmc_carry,
        warmup_iteration=jnp.zeros((), jnp.int64),
        center_welford=adaptation.welford_init(dim),
        center_estimate=position,
        recent=walkers,
        training=training,
        key=jax.random.key_data(jax.random.key(0)),
        started=jnp.asarray(trained is not None),
        report=learned.empty_report(),
        gate=undecided(trained),
    )


def hmc_iteration(settings: TransportSettings, key, carry: TransportCarry, extras, tuning: bool,
                  driver_code=adaptation.FAST):
    """One true-gradient HMC iteration (``learned.hmc_warmup_iteration``)."""
    return learned.hmc_warmup_iteration(settings.hmc_part, settings.hmc_codes,
                                        settings.num_walkers, key, carry, extras, tuning,
                                        driver_code)


def latent_iteration(settings: TransportSettings, key, carry: TransportCarry, extras):
    """One latent HMC transition of the current map (stats laid out as HMC's)."""
    flow = carry.training.params
    state, info = latent_transition(
        settings, key, carry.hmc.state, flow, carry.training.context.whitening, extras
    )
    stats = pack_stats(
        info.acceptance_rate,
        info.is_divergent,
        state.logdensity,
        info.n_grad_evals + carry.hmc.refresh_evals,
        info.energy,
        info.energy_error,
        jnp.exp(flow.log_step_size),
        info.num_steps,
    )
    hmc_carry = carry.hmc._replace(state=state, refresh_evals=jnp.zeros((), int))
    return carry._replace(hmc=hmc_carry), state.position, stats


def chain_estimates(carry: TransportCarry):
    step_size, inverse_mass = adaptation.warmup_final(carry.hmc.warmup)
    return carry.center_estimate, inverse_mass, step_size


def start_chain(settings: TransportSettings, key, carry: TransportCarry) -> TransportCarry:
    center, inverse_mass, step_size = chain_estimates(carry)
    training = fresh_training(settings, carry.recent, center, inverse_mass, step_size,
                              carry.training.context.extras)
    return carry._replace(training=training, key=jax.random.key_data(key),
                          started=jnp.ones((), bool))


def pooled_start(settings: TransportSettings, key, carry: TransportCarry) -> TransportCarry:
    centers, inverse_masses, step_sizes = jax.vmap(chain_estimates)(carry)
    center, inverse_mass, step_size = learned.mixture_moments(centers, inverse_masses, step_sizes)
    training = jax.vmap(
        lambda w, extras: fresh_training(settings, w, center, inverse_mass, step_size, extras)
    )(carry.recent, carry.training.context.extras)
    return carry._replace(
        training=training,
        key=jnp.broadcast_to(jax.random.key_data(key), carry.key.shape),
        started=jnp.ones_like(carry.started),
    )


# --------------------------------------------------------------------------- the program


def transport_settings(
    target: Target,
    *,
    num_walkers: int = 32,
    num_draws: int = 256,
    train_steps: int = 1000,
    learning_rate: float = 3e-3,
    final_learning_rate: float = 3e-4,
    hmc_warmup: int = 200,
    width: int = 64,
    depth: int = 1,
    target_accept: float = 0.95,
    path_length: float = np.pi / 2,
    max_steps: int = 1024,
    step_size: float | None = None,
    trained=None,
) -> TransportSettings:
    """The options of ``transport_program``, resolved for ``target``."""
    dim = target.dim
    if trained is not None:
        train_steps = 0
        template = jax.tree.map(jnp.asarray, trained.networks)
    else:
        template = transport.init_map(jax.random.key(0), dim, width, depth)
    per_round, _ = learned.training_rounds(train_steps, hmc_warmup, None)
    settings = TransportSettings(
        dim=dim,
        num_walkers=num_walkers,
        num_draws=num_draws,
        train_steps=train_steps,
        per_round=per_round,
        target_accept=target_accept,
        path_length=path_length,
        max_steps=max_steps,
        hmc_warmup=hmc_warmup,
        logdensity=target.logdensity,
        hmc_part=hmc_program(target, max_steps=max_steps, step_size=step_size),
        hmc_codes=jnp.asarray(adaptation.window_codes(hmc_warmup), jnp.int8),
        template=template,
    )
    return settings._replace(trainer=make_trainer(settings, learning_rate, final_learning_rate))


def transport_program(target: Target, *, trained=None, **options) -> ChainProgram:
    """The ``ChainProgram`` of NeuTraHMC on ``target``; ``options`` as
    ``transport_settings``'s (``steps.transport.NeuTraHMC`` documents them). With
    ``trained`` (a ``TrainedTransport``) the chain runs that kernel from the start."""
    settings = transport_settings(target, trained=trained, **options)
    method = learned.LearnedMethod(
        init=partial(init_carry, settings, trained),
        refresh=lambda carry, position, extras: learned.refresh_training(
            carry, settings.hmc_part.refresh, position, extras
        ),
        hmc_iteration=partial(hmc_iteration, settings),
        learned_iteration=partial(latent_iteration, settings),
        start_chain=partial(start_chain, settings),
        pooled_start=partial(pooled_start, settings),
        run_round=partial(run_round, settings),
    )
    return learned.learned_program(
        method,
        learned_mode=LATENT_MODE,
        train_steps=settings.train_steps,
        hmc_warmup=settings.hmc_warmup,
        num_walkers=settings.num_walkers,
        stat_specs=COMMON_STATS + TRANSPORT_STATS,
        trained=trained is not None,
    )
