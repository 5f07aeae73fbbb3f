"""Neural-network MCMC step methods for PyMC, compiled to JAX and exact by Metropolis-Hastings.

>>> with model:
...     idata = pm.sample(step=JaxHMC())
"""

from pymc_neural_steps.sampling import sample
from pymc_neural_steps.steps import JaxHMC
from pymc_neural_steps.target import (
    DiscreteVariableError,
    LayoutMismatchError,
    NonFiniteInitialPointError,
    build_target,
)

__version__ = "0.1.0"

__all__ = [
    "DiscreteVariableError",
    "JaxHMC",
    "LayoutMismatchError",
    "NonFiniteInitialPointError",
    "build_target",
    "sample",
]
