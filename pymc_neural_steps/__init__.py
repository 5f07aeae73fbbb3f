"""Neural-network MCMC step methods for PyMC, compiled to JAX and exact by Metropolis-Hastings.

>>> with model:
...     idata = pm.sample(step=NNgHMC())
"""

from pymc_neural_steps import _cache, _xla

_xla.install()  # jaxlib < 0.11 on the CPU: no batched LAPACK kernels (see _xla.py)
_cache.install()  # JAX's persistent compilation cache (see _cache.py)
configure_compilation_cache = _cache.configure_compilation_cache

from pymc_neural_steps.sampling import sample  # noqa: E402
from pymc_neural_steps.steps import (  # noqa: E402
    EntropyFlowMC,
    JaxHMC,
    L2HMC,
    NeuTraHMC,
    NNgHMC,
    TrainedNNgHMC,
)
from pymc_neural_steps.target import (  # noqa: E402
    DiscreteVariableError,
    LayoutMismatchError,
    NonFiniteInitialPointError,
    build_target,
)
from pymc_neural_steps.validation import InvalidSettingError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DiscreteVariableError",
    "EntropyFlowMC",
    "InvalidSettingError",
    "JaxHMC",
    "L2HMC",
    "LayoutMismatchError",
    "NNgHMC",
    "NeuTraHMC",
    "NonFiniteInitialPointError",
    "TrainedNNgHMC",
    "build_target",
    "configure_compilation_cache",
    "sample",
]
