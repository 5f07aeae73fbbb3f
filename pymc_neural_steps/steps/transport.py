"""``NeuTraHMC`` as a PyMC step: HMC in the latent space of a learned transport map.

A thin adapter: the options (validated), the stats, and a call into
``programs/transport.py``'s ``ChainProgram`` (HMC warm-up, the map fitted by reverse KL
on base draws, the gate, latent HMC with the map frozen; Hoffman et al. 2019). Reuse,
saving and loading of the trained map are ``trained.py``'s.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import numpy as np

from pymc_neural_steps.kernels import transport
from pymc_neural_steps.programs.base import ChainProgram, StatSpec
from pymc_neural_steps.programs.gate import GATE_STATS
from pymc_neural_steps.programs.transport import TRANSPORT_STATS, transport_program
from pymc_neural_steps.steps.base import NeuralStep
from pymc_neural_steps.target import Target, build_layout
from pymc_neural_steps.trained import TrainedKernelStep, TrainedTransport
from pymc_neural_steps.validation import (
    check_count,
    check_fraction,
    check_positive,
    check_step_size,
)

__all__ = ["NeuTraHMC", "TrainedTransport"]


class NeuTraHMC(TrainedKernelStep, NeuralStep):
    """HMC on the posterior pulled back through a transport map learned in warm-up
    (Hoffman et al. 2019, "NeuTra-lizing bad geometry in HMC").

    For posteriors whose scale changes from region to region (funnels, centred
    hierarchical models), where one step size and mass matrix cannot fit everywhere.

    Parameters
    ----------
    vars
        Value variables to sample (all continuous ones by default).
    num_walkers
        Walkers that follow the latent kernel during training (its step size adapts on
        them; the gate's pilots start from them): per chain under ``pm.sample``, shared
        by all chains under ``pymc_neural_steps.sample``.
    num_draws
        Base draws z ~ N(0, I) per optimiser step of the reverse KL.
    train_steps
        Training budget in optimiser steps, whatever the length of ``tune``.
    learning_rate, final_learning_rate
        Adam's rate, decayed exponentially from the first to the second over the budget.
    hmc_warmup
        Iterations of true-gradient HMC warm-up that set the whitening the map starts from.
    width, depth
        Hidden layers of each coupling layer's network.
    target_accept
        Acceptance rate the latent HMC's step size is adapted to.
    path_length
        Mean integration time of the latent HMC (jittered uniformly on (0, 2·path_length]).
    max_steps
        Cap on leapfrog steps per transition.
    step_size
        The HMC warm-up's initial step size (default 0.25 / d^¼).
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up ``step.trained`` holds the ``TrainedTransport``; ``save`` writes it,
    ``NeuTraHMC.load`` / ``from_trained`` sample with it. The gate (``programs/gate.py``)
    sends a chain back to HMC, with a warning, when the latent kernel does not mix faster
    per true gradient.
    """

    name = "neutra"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = TRANSPORT_STATS + GATE_STATS
    kind = "NeuTraHMC"
    trained_class = TrainedTransport
    kernel_options = frozenset({"width", "depth", "path_length", "max_steps"})
    loss_name = "reverse KL"
    untrained_kernel = "HMC with the warm-up's diagonal mass matrix"

    def __init__(
        self,
        vars=None,  # noqa: A002
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
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        self.options = dict(
            num_walkers=check_count("num_walkers", num_walkers),
            num_draws=check_count("num_draws", num_draws),
            train_steps=check_count("train_steps", train_steps, minimum=0),
            learning_rate=check_positive("learning_rate", learning_rate),
            final_learning_rate=check_positive("final_learning_rate", final_learning_rate),
            hmc_warmup=check_count("hmc_warmup", hmc_warmup),
            width=check_count("width", width),
            depth=check_count("depth", depth),
            target_accept=check_fraction("target_accept", target_accept),
            path_length=check_positive("path_length", path_length),
            max_steps=check_count("max_steps", max_steps),
            step_size=check_step_size(step_size),
        )
        self.trained: TrainedTransport | None = None
        self._trained_start: TrainedTransport | None = None
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)

    def _program(self, target: Target) -> ChainProgram:
        return transport_program(target, trained=self._trained_start, **self.options)

    # --- what trained.py needs to know about the map ---------------------------------------
    def _save_metadata(self, trained: TrainedTransport) -> dict:
        flow = trained.networks
        first = flow.couplings[0] if flow.couplings else None
        return {
            "network": {
                "dim": int(flow.dim),
                "width": int(first.layers[0].out_features) if first else self.options["width"],
                "depth": len(first.layers) - 1 if first else self.options["depth"],
                "activation": first.activation if first else "tanh",
            },
        }

    @classmethod
    def _load_template(cls, metadata: dict):
        shape = metadata["network"]
        template = transport.init_map(
            jax.random.key(0), int(shape["dim"]), int(shape["width"]), int(shape["depth"]),
            activation=str(shape.get("activation", "tanh")),
        )
        return template, False, {}
