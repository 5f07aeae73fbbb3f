"""``JaxHMC``: HMC on the true gradient, compiled to JAX, with Stan-style warm-up.

The PyMC adapter (options, stats) of ``programs/hmc.py``'s program, which holds the
algorithm: dual-averaging step size, windowed diagonal mass matrix, jittered path length.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pymc_neural_steps.programs.base import ChainProgram, StatSpec
from pymc_neural_steps.programs.hmc import (  # noqa: F401 -- re-exported (old import paths)
    HMC_STATS,
    HMCCarry,
    hmc_program,
    initial_step_size,
    jittered_num_steps,
)
from pymc_neural_steps.steps.base import NeuralStep
from pymc_neural_steps.target import Target
from pymc_neural_steps.validation import (
    check_count,
    check_fraction,
    check_positive,
    check_step_size,
)

__all__ = ["HMC_STATS", "HMCCarry", "JaxHMC", "hmc_program", "initial_step_size", "jittered_num_steps"]


class JaxHMC(NeuralStep):
    """Hamiltonian Monte Carlo with the true gradient, compiled to JAX.

    Parameters
    ----------
    vars
        Value variables to sample (all continuous ones by default).
    target_accept
        Mean acceptance probability that step-size adaptation aims for.
    path_length
        Mean integration time in whitened units; each draw uses a uniform jitter on
        (0, 2 · path_length].
    max_steps
        Cap on leapfrog steps per draw.
    adapt_mass
        Estimate a diagonal mass matrix during warm-up (Stan's windows).
    step_size
        Initial step size (default 0.25 / d^¼).
    model, rng, initial_point
        As for PyMC's own step methods.
    """

    name = "jax_hmc"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = HMC_STATS

    def __init__(
        self,
        vars=None,  # noqa: A002
        *,
        target_accept: float = 0.8,
        path_length: float = np.pi / 2,
        max_steps: int = 1024,
        adapt_mass: bool = True,
        step_size: float | None = None,
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        self.options = dict(
            target_accept=check_fraction("target_accept", target_accept),
            path_length=check_positive("path_length", path_length),
            max_steps=check_count("max_steps", max_steps),
            adapt_mass=bool(adapt_mass),
            step_size=check_step_size(step_size),
        )
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)

    def _program(self, target: Target) -> ChainProgram:
        return hmc_program(target, **self.options)
