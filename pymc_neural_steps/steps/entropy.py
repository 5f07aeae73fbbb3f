"""``EntropyFlowMC`` as a PyMC step: the proposal-entropy sampler (Li, Chen & Sommer 2021).

A thin adapter: the options (validated), the stats, and a call into
``programs/entropy.py``'s ``ChainProgram``, which holds the algorithm (HMC warm-up, the
entropy objective's training on a bootstrapped buffer of walkers, §3.3 of the paper, the
frozen flow). Reuse, saving and loading of the trained kernel are ``trained.py``'s.
Measurements behind the defaults: ``docs/design-notes.md``.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np

from pymc_neural_steps.kernels import entropy
from pymc_neural_steps.programs.base import ChainProgram, StatSpec
from pymc_neural_steps.programs.gate import GATE_STATS
from pymc_neural_steps.programs.entropy import (
    DEFAULT_TARGET_ACCEPTANCE,
    DENSE_WHITENING_MAX_DIM,
    ENTROPY_STATS,
    FlowContext,
    entropy_program,
    resolve_dense_whitening,
)
from pymc_neural_steps.steps.base import NeuralStep
from pymc_neural_steps.target import Target, build_layout
from pymc_neural_steps.trained import TrainedEntropyFlow, TrainedKernelStep
from pymc_neural_steps.validation import (
    check_count,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_step_size,
)

__all__ = [
    "DENSE_WHITENING_MAX_DIM",
    "EntropyFlowMC",
    "FlowContext",
    "TrainedEntropyFlow",
    "entropy_program",
]


class EntropyFlowMC(TrainedKernelStep, NeuralStep):
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
        the networks under it (``programs/entropy.py``; ``docs/design-notes.md``).
    step_size
        The HMC warm-up's initial step size (default 0.25 / d^¼); the flow starts from
        the step size the warm-up adapted.
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up ``step.trained`` holds the ``TrainedEntropyFlow`` (the last chain's under
    ``pm.sample`` with ``cores=1``; the shared one under ``pymc_neural_steps.sample``);
    ``save`` writes it, ``EntropyFlowMC.load`` / ``from_trained`` sample with it. With
    ``tune=0`` nothing is trained: the chain samples as plain HMC with the initial
    settings, with a warning (a loaded kernel samples as it is).
    """

    name = "entropyflow"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = ENTROPY_STATS + GATE_STATS
    kind = "EntropyFlowMC"
    trained_class = TrainedEntropyFlow
    # Settings that describe the kernel itself and travel with it.
    kernel_options = frozenset({"num_coupling_steps", "use_r", "width", "depth"})
    loss_name = "objective"
    untrained_kernel = "MALA"

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
        step_size: float | None = None,
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        resolve_dense_whitening(dense_whitening, 1)  # validates the option
        self.options = dict(
            num_coupling_steps=check_count("num_coupling_steps", num_coupling_steps),
            use_r=bool(use_r),
            num_walkers=check_count("num_walkers", num_walkers),
            train_steps=check_count("train_steps", train_steps, minimum=0),
            learning_rate=check_positive("learning_rate", learning_rate),
            final_learning_rate=check_positive("final_learning_rate", final_learning_rate),
            target_acceptance=check_fraction("target_acceptance", target_acceptance),
            beta_rate=check_nonnegative("beta_rate", beta_rate),
            initial_beta=None if initial_beta is None else check_positive(
                "initial_beta", initial_beta
            ),
            hmc_warmup=check_count("hmc_warmup", hmc_warmup),
            width=check_count("width", width),
            depth=check_count("depth", depth),
            target_accept=check_fraction("target_accept", target_accept),
            dense_whitening=dense_whitening if dense_whitening == "auto" else bool(dense_whitening),
            rewhiten_steps=check_count("rewhiten_steps", rewhiten_steps, minimum=0),
            step_size=check_step_size(step_size),
        )
        self.trained: TrainedEntropyFlow | None = None
        self._trained_start: TrainedEntropyFlow | None = None
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)

    def _program(self, target: Target) -> ChainProgram:
        return entropy_program(target, trained=self._trained_start, **self.options)

    # --- what trained.py needs to know about the flow's networks ---------------------------
    def _trained_fields(self, training, carry, batched):
        return {"beta": float(training.context.beta)}, {}

    def _save_metadata(self, trained: TrainedEntropyFlow) -> dict:
        nets = trained.networks
        first = nets.halves[0].sqt
        return {
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
        }

    @classmethod
    def _load_template(cls, metadata: dict):
        shape = metadata["network"]
        generic = entropy.init_networks(
            jax.random.key(0),
            shape["dim"],
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
        beta = check_positive("the saved beta", metadata.get("beta", 1.0))
        return template, bool(metadata.get("dense_whitening")), {"beta": beta}
