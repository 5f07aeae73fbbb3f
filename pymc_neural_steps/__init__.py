"""Neural-network MCMC step methods for PyMC, compiled to JAX and exact by Metropolis-Hastings.

>>> with model:
...     idata = pm.sample(step=NNgHMC())
"""

from pymc_neural_steps.sampling import sample
from pymc_neural_steps.steps import EntropyFlowMC, JaxHMC, L2HMC, NNgHMC, TrainedNNgHMC
from pymc_neural_steps.target import (
    DiscreteVariableError,
    LayoutMismatchError,
    NonFiniteInitialPointError,
    build_target,
)

__version__ = "0.1.0"

__all__ = [
    "DiscreteVariableError",
    "EntropyFlowMC",
    "JaxHMC",
    "L2HMC",
    "LayoutMismatchError",
    "NNgHMC",
    "NonFiniteInitialPointError",
    "TrainedNNgHMC",
    "build_target",
    "sample",
]
