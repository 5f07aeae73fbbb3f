"""``L2HMC`` as a PyMC step: a learned leapfrog (Levy, Hoffman & Sohl-Dickstein 2018).

A thin adapter: the options (validated), the stats, and a call into
``programs/l2hmc.py``'s ``ChainProgram``, which holds the algorithm (HMC warm-up, ESJD
training on a walker ensemble, the frozen kernel; §3 and §5 of the paper). Reuse, saving
and loading of the trained kernel are ``trained.py``'s. Measurements behind the defaults:
``docs/design-notes.md``.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np

from pymc_neural_steps.kernels import l2hmc
from pymc_neural_steps.programs.base import ChainProgram, StatSpec
from pymc_neural_steps.programs.gate import GATE_STATS
from pymc_neural_steps.programs.l2hmc import L2HMC_STATS, l2hmc_program
from pymc_neural_steps.programs.learned import training_rounds
from pymc_neural_steps.steps.base import NeuralStep
from pymc_neural_steps.target import Target, build_layout
from pymc_neural_steps.trained import TrainedKernelStep, TrainedL2HMC
from pymc_neural_steps.validation import (
    check_count,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_step_size,
)

__all__ = ["L2HMC", "TrainedL2HMC", "l2hmc_program", "training_rounds"]


class L2HMC(TrainedKernelStep, NeuralStep):
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
        S Sᵀ the HMC warm-up's mean and (dense or diagonal) covariance.
    step_size_jitter
        Each transition scales ε by U[1 − j, 1 + j]; keeps training away from the
        half-period trajectories that move far but never change the radius.
    hmc_warmup
        Iterations of true-gradient HMC warm-up that set the whitening and initial ε.
    width, depth
        Hidden layers of the networks (default width 2d clipped to [10, 100]).
    target_accept
        Acceptance rate the HMC warm-up adapts its step size to.
    step_size
        The HMC warm-up's initial step size (default 0.25 / d^¼); training starts from the
        step size the warm-up adapted.
    dense_whitening
        ``True``: the networks run in y with x = c + L y, L the Cholesky factor of a dense
        covariance estimated from the HMC warm-up's second half (pooled over chains in the
        fast driver); ``False``: the diagonal whitening x = c + √diag M⁻¹ ⊙ y; ``"auto"``
        (default): dense for d ≤ 100 (``docs/design-notes.md``).
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up ``step.trained`` holds the ``TrainedL2HMC`` (the last chain's under
    ``pm.sample`` with ``cores=1``; the shared one under ``pymc_neural_steps.sample``; with
    ``cores > 1`` training happens in worker processes and nothing comes back). ``save``
    writes it; ``L2HMC.load`` samples another run, or a model with the same parameter
    layout, with it. With ``tune=0`` nothing is trained: the chain samples as plain HMC
    with the initial settings, with a warning (a loaded kernel samples as it is).
    """

    name = "l2hmc"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = L2HMC_STATS + GATE_STATS
    kind = "L2HMC"
    trained_class = TrainedL2HMC
    # Settings that describe the kernel itself and travel with it.
    kernel_options = frozenset({"num_steps", "width", "depth", "step_size_jitter"})
    untrained_kernel = "HMC with T fixed steps"

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
        step_size: float | None = None,
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        if not (dense_whitening == "auto" or isinstance(dense_whitening, bool)):
            raise ValueError(
                f"dense_whitening must be 'auto', True or False, got {dense_whitening!r}"
            )
        self.options = dict(
            num_steps=check_count("num_steps", num_steps),
            num_walkers=check_count("num_walkers", num_walkers),
            train_steps=check_count("train_steps", train_steps, minimum=0),
            learning_rate=check_positive("learning_rate", learning_rate),
            final_learning_rate=check_positive("final_learning_rate", final_learning_rate),
            scale=check_positive("scale", scale),
            burnin_weight=check_nonnegative("burnin_weight", burnin_weight),
            burnin_scale=check_nonnegative("burnin_scale", burnin_scale),
            step_size_jitter=check_fraction("step_size_jitter", step_size_jitter, closed_low=True),
            hmc_warmup=check_count("hmc_warmup", hmc_warmup),
            width=None if width is None else check_count("width", width),
            depth=check_count("depth", depth),
            target_accept=check_fraction("target_accept", target_accept),
            dense_whitening=dense_whitening,
            step_size=check_step_size(step_size),
        )
        self.trained: TrainedL2HMC | None = None  # set when warm-up ends
        self._trained_start: TrainedL2HMC | None = None  # set by from_trained / load
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)

    def _program(self, target: Target) -> ChainProgram:
        return l2hmc_program(target, trained=self._trained_start, **self.options)

    # --- what trained.py needs to know about L2HMC's networks ------------------------------
    def _trained_fields(self, training, carry, batched):
        best = getattr(carry, "best", None)
        restored = None if best is None else np.asarray(jax.device_get(best.restored))
        if batched and restored is not None:
            restored = restored[0]
        return {}, {"restored_best": bool(restored) if restored is not None else False}

    def _save_metadata(self, trained: TrainedL2HMC) -> dict:
        nets = trained.networks
        return {
            "network": {
                "dim": int(nets.dim),
                "num_steps": int(nets.num_steps),
                "width": int(nets.x_net.hidden[0].out_features),
                "depth": len(nets.x_net.hidden),
                "dense_whitening": bool(np.ndim(trained.inverse_mass) == 2),
            },
        }

    @classmethod
    def _load_template(cls, metadata: dict):
        shape = metadata["network"]
        template = l2hmc.init_networks(
            jax.random.key(0), shape["dim"], shape["num_steps"], shape["width"], shape["depth"]
        )
        return template, bool(shape.get("dense_whitening")), {}
