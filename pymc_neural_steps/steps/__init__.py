"""PyMC step methods: thin adapters from ``BlockedStep`` to the JAX kernels."""

from pymc_neural_steps.programs.base import ChainProgram
from pymc_neural_steps.steps.base import NeuralStep
from pymc_neural_steps.steps.entropy import EntropyFlowMC, TrainedEntropyFlow
from pymc_neural_steps.steps.hmc import JaxHMC
from pymc_neural_steps.steps.l2hmc import L2HMC
from pymc_neural_steps.steps.nnghmc import NNgHMC, TrainedNNgHMC
from pymc_neural_steps.steps.transport import NeuTraHMC, TrainedTransport

__all__ = [
    "ChainProgram",
    "EntropyFlowMC",
    "JaxHMC",
    "L2HMC",
    "NNgHMC",
    "NeuTraHMC",
    "NeuralStep",
    "TrainedEntropyFlow",
    "TrainedNNgHMC",
    "TrainedTransport",
]
