"""PyMC step methods: thin adapters from ``BlockedStep`` to the JAX kernels."""

from pymc_neural_steps.steps.base import ChainProgram, NeuralStep
from pymc_neural_steps.steps.hmc import JaxHMC

__all__ = ["ChainProgram", "JaxHMC", "NeuralStep"]
