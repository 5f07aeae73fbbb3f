"""Reference posteriors: a PyMC model together with the answer a correct sampler must give.

A :class:`Reference` pairs a model builder with the posterior mean and standard deviation of
every scalar parameter, and with how precisely each of those numbers is known (its Monte
Carlo standard error, 0 for analytic answers). :func:`~pymc_neural_steps.testing.check_exactness`
compares a sampler's output against it.

Key convention
--------------
Scalar parameters are keyed by strings in ArviZ's label style, in the constrained space the
posterior is reported in, with 0-based indices in C order over the variable's own shape:

* ``"mu"`` for a scalar variable,
* ``"theta[0]"`` … ``"theta[7]"`` for a vector,
* ``"rate[1, 0]"`` for a matrix (comma and one space between indices).

:func:`scalar_key` builds a key and :func:`split_key` takes one apart. posteriordb labels
its parameters 1-based (``"theta[1]"``); :func:`from_one_based` converts them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

import numpy as np
import xarray as xr

__all__ = ["Moments", "Reference", "data_file", "from_one_based", "scalar_key", "split_key"]


def data_file(*parts: str):
    """A file of the reference data shipped in ``pymc_neural_steps/testing/data``."""
    return resources.files("pymc_neural_steps.testing").joinpath("data", *parts)

_KEY = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<index>\s*\d+(?:\s*,\s*\d+)*\s*)\])?$")


def scalar_key(name: str, index: tuple[int, ...] = ()) -> str:
    """The key of element ``index`` of variable ``name``: ``scalar_key("theta", (0,)) == "theta[0]"``."""
    if not index:
        return name
    return f"{name}[{', '.join(str(int(i)) for i in index)}]"


def split_key(key: str) -> tuple[str, tuple[int, ...]]:
    """Inverse of :func:`scalar_key`: ``split_key("rate[1, 0]") == ("rate", (1, 0))``."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a parameter key like 'mu', 'theta[0]' or 'rate[1, 0]'")
    index = match["index"]
    return match["name"], tuple(int(i) for i in index.split(",")) if index else ()


def from_one_based(key: str) -> str:
    """Convert a 1-based posteriordb label (``"theta[1]"``) to our 0-based key (``"theta[0]"``)."""
    name, index = split_key(key)
    if any(i < 1 for i in index):
        raise ValueError(f"{key!r} is not a 1-based label")
    return scalar_key(name, tuple(i - 1 for i in index))


@dataclass(frozen=True)
class Moments:
    """What is known about one scalar parameter's posterior.

    ``mean_mcse`` and ``sd_mcse`` are the Monte Carlo standard errors of the reference values
    themselves (0 when the answer is analytic). ``sd_systematic`` is an extra, absolute
    uncertainty on ``sd`` for references whose sd is known to be off by more than its MCSE
    says (see :func:`~pymc_neural_steps.testing.garch11`); it enters the z-score's
    denominator in quadrature, like an MCSE. ``check_sd=False`` marks an sd that is exact
    but cannot be tested from a sample, because the draws are so heavy-tailed that neither
    the sd nor its MCSE can be estimated (the funnel's x); only the mean is then checked.
    """

    mean: float
    sd: float
    mean_mcse: float = 0.0
    sd_mcse: float = 0.0
    sd_systematic: float = 0.0
    check_sd: bool = True

    def __post_init__(self) -> None:
        for name in ("mean", "sd", "mean_mcse", "sd_mcse", "sd_systematic"):
            value = float(getattr(self, name))
            if not np.isfinite(value):
                raise ValueError(f"Moments.{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.sd <= 0 or min(self.mean_mcse, self.sd_mcse, self.sd_systematic) < 0:
            raise ValueError(f"invalid moments {self}")


ExactDraws = Callable[[np.random.Generator, int], Mapping[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Reference:
    """A PyMC model and its reference posterior moments.

    Attributes
    ----------
    name
        Short identifier, e.g. ``"eight_schools_noncentered"``.
    build_model
        Zero-argument callable returning a fresh ``pm.Model`` (a new one on every call, so
        tests and benchmarks never share graph state).
    moments
        ``{key: Moments}`` for every scalar parameter with a reference, keys as described in
        the module docstring. Iteration order is the model's variable order.
    source
        Where the numbers come from and how they were obtained.
    exact_draws
        For analytic references: ``exact_draws(rng, n)`` returns ``n`` independent draws
        from the posterior as ``{variable: array of shape (n, *variable_shape)}``,
        Deterministics included. ``None`` when no exact sampler exists.

    References compare and hash by identity (their models are closures).
    """

    name: str
    build_model: Callable[[], object]
    moments: Mapping[str, Moments]
    source: str
    exact_draws: ExactDraws | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in self.moments:
            if scalar_key(*split_key(key)) != key:
                raise ValueError(f"reference key {key!r} is not in canonical form")
        object.__setattr__(self, "moments", MappingProxyType(dict(self.moments)))

    def __getitem__(self, key: str) -> Moments:
        return self.moments[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.moments)

    def __len__(self) -> int:
        return len(self.moments)

    @property
    def var_names(self) -> tuple[str, ...]:
        """The model variables that have reference moments, in order."""
        return tuple(dict.fromkeys(split_key(key)[0] for key in self.moments))

    def sample_exact(self, seed: int | np.random.Generator, *, chains: int = 4, draws: int = 1000) -> xr.Dataset:
        """Independent draws from the posterior, shaped like ``pm.sample``'s posterior group.

        Only for references with ``exact_draws``; useful to test the harness itself and to
        start chains in the typical set.
        """
        if self.exact_draws is None:
            raise ValueError(f"reference {self.name!r} has no exact sampler")
        rng = np.random.default_rng(seed)
        raw = self.exact_draws(rng, chains * draws)
        data_vars = {}
        for name, values in raw.items():
            values = np.asarray(values, dtype=float)
            shape = values.shape[1:]
            dims = ("chain", "draw", *(f"{name}_dim_{i}" for i in range(len(shape))))
            data_vars[name] = (dims, values.reshape(chains, draws, *shape))
        return xr.Dataset(data_vars, coords={"chain": np.arange(chains), "draw": np.arange(draws)})
