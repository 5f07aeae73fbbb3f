"""The posteriors the benchmark samples, in one registry.

Every target is a :class:`~pymc_neural_steps.testing.Reference` from the package's testing
module: a fresh PyMC model per run plus the posterior moments a correct sampler must
reproduce, so the same object gives the model to time and the z-scores to check. A new
target is one ``register(...)`` line at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pymc_neural_steps import testing

__all__ = ["TARGETS", "BenchTarget", "default_targets", "quick_targets", "register"]


@dataclass(frozen=True)
class BenchTarget:
    """One row group of the table.

    ``reference`` builds the :class:`~pymc_neural_steps.testing.Reference` (model builder
    and moments). ``quick`` puts the target in ``--quick`` runs; ``default`` in runs that
    name no targets (a target too slow for the everyday run sets it to False).
    """

    name: str
    reference: Callable[[], testing.Reference]
    description: str
    quick: bool = False
    default: bool = True


TARGETS: dict[str, BenchTarget] = {}


def register(target: BenchTarget) -> BenchTarget:
    if target.name in TARGETS:
        raise ValueError(f"benchmark target {target.name!r} is already registered")
    TARGETS[target.name] = target
    return target


def default_targets() -> list[str]:
    return [name for name, target in TARGETS.items() if target.default]


def quick_targets() -> list[str]:
    return [name for name, target in TARGETS.items() if target.quick]


register(BenchTarget(
    "gaussian_10d", lambda: testing.correlated_gaussian(10),
    "10-d dense Gaussian, condition number 100, rotated (analytic)", quick=True,
))
register(BenchTarget(
    "eight_schools_nc", testing.eight_schools_noncentered,
    "posteriordb eight_schools_noncentered (Stan reference draws)", quick=True,
))
register(BenchTarget(
    "constrained", testing.constrained,
    "log, logodds, interval, simplex transforms, pm.Data (analytic)", quick=True,
))
register(BenchTarget(
    "garch11", testing.garch11,
    "posteriordb garch11: GARCH(1,1), T = 200, interval constraints (Stan reference)",
))
register(BenchTarget(
    "german_credit", testing.german_credit,
    "logistic regression, 1000 x 25 (inference-gym Stan reference)",
))
