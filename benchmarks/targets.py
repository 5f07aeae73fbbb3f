"""The posteriors the benchmark samples, in one registry.

Every target is a :class:`~pymc_neural_steps.testing.Reference` from the package's testing
module: a fresh PyMC model per run plus the posterior moments a correct sampler must
reproduce, so the same object gives the model to time and the z-scores to check. A new
target is one ``register(...)`` line at the bottom of this file.

Run lengths: the full run's defaults (``runner.FULL_SETTINGS``: 4 chains x 2000 draws after
1000 warm-up iterations) apply unless a target sets its own ``draws`` / ``tune`` /
``chains``; ``--quick`` runs the quick targets with ``runner.QUICK_SETTINGS`` whatever they
set, and command-line ``--draws`` / ``--tune`` / ``--chains`` override both. ``skip`` lists
(sampler pattern, reason) pairs: matching samplers are not run on the target and the
reason is reported in the table's notes. ``PRESETS`` applies the same fields to targets by
name pattern when they are registered, so that targets added elsewhere in this file (the
expensive-gradient ones) get the settings that keep the full suite within its time budget.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymc_neural_steps import testing

__all__ = [
    "PRESETS",
    "TARGETS",
    "BenchTarget",
    "default_targets",
    "quick_targets",
    "register",
    "suite_targets",
]


@dataclass(frozen=True)
class BenchTarget:
    """One row group of the table.

    ``reference`` builds the :class:`~pymc_neural_steps.testing.Reference` (model builder
    and moments). ``quick`` puts the target in ``--quick`` runs; ``default`` in runs that
    name no targets (a target too slow for the everyday run sets it to False).
    ``draws``, ``tune``, ``chains``: the full run's settings for this target (None: the
    run's defaults). ``skip``: (sampler glob pattern, reason) pairs not to run.
    ``keep_trained``: keep the learned samplers' trained kernels of this target for the
    plots (``plots.py``: the banana's learned gradient field). ``suites``: the named suites
    (``--suite``) the target belongs to; a suite runs its own length and samplers, and ignores
    ``skip`` (``benchmarks/robustness.py``).
    """

    name: str
    reference: Callable[[], testing.Reference]
    description: str
    quick: bool = False
    default: bool = True
    draws: int | None = None
    tune: int | None = None
    chains: int | None = None
    skip: tuple[tuple[str, str], ...] = ()
    keep_trained: bool = False
    suites: tuple[str, ...] = ()

    def skip_reason(self, sampler: str) -> str | None:
        """Why ``sampler`` is not run on this target, or None if it is."""
        for pattern, reason in self.skip:
            if fnmatch.fnmatchcase(sampler, pattern):
                return reason
        return None


TARGETS: dict[str, BenchTarget] = {}

# Learned kernels whose warm-up trains on an ensemble (~10^6 true gradients with the default
# budgets): hours on a target whose gradient costs milliseconds.
_TRAINS_ON_ENSEMBLE = "trains on an ensemble of walkers (~10^6 true gradients by default): hours on this target"
_EXPENSIVE = dict(
    draws=500, tune=500, chains=2,
    skip=(("l2hmc*", _TRAINS_ON_ENSEMBLE), ("entropy*", _TRAINS_ON_ENSEMBLE), ("jaxhmc_pymc", "driver comparison only")),
)

# The full run must finish in 45 minutes. nutpie's normalising-flow adaptation trains for
# minutes per target, and the ensemble-trained kernels for one to two: they run on the targets
# their issues name (the correlated, rotated and ill-conditioned Gaussians, the banana, the
# sigma = 3 funnel; EntropyFlowMC also German credit) and are skipped, with this reason, on
# the rest. --run-skipped runs such a cell anyway.
_BUDGET = "full-run time budget (45 min): runs on its headline targets; --run-skipped runs it here"
_NF_SKIP = ("nutpie_nf", _BUDGET)
_L2HMC_SKIP = ("l2hmc*", _BUDGET)
_ENTROPY_SKIP = ("entropy*", _BUDGET)

# The robustness suite (issue 14): real posteriors nobody tuned the defaults for.
_ROBUSTNESS = "robustness"

PRESETS: list[tuple[str, dict[str, Any]]] = [
    # The three expensive-gradient targets (GP 500 x 4, logistic 50k x 200, GARCH(2,1) T=1000):
    # short runs, and no ensemble-trained kernels.
    ("gp_regression*", _EXPENSIVE),
    ("*logistic*", _EXPENSIVE),
    ("garch21*", _EXPENSIVE),
]
"""(target glob pattern, BenchTarget fields) applied at registration to targets that leave
those fields at their defaults."""


def _apply_presets(target: BenchTarget) -> BenchTarget:
    defaults = {f.name: f.default for f in dataclasses.fields(BenchTarget)}
    for pattern, changes in PRESETS:
        if fnmatch.fnmatchcase(target.name, pattern):
            keep = {k: v for k, v in changes.items() if getattr(target, k) == defaults[k]}
            target = dataclasses.replace(target, **keep)
    return target


def register(target: BenchTarget) -> BenchTarget:
    if target.name in TARGETS:
        raise ValueError(f"benchmark target {target.name!r} is already registered")
    target = _apply_presets(target)
    TARGETS[target.name] = target
    return target


def suite_targets(suite: str) -> list[str]:
    return [name for name, target in TARGETS.items() if suite in target.suites]


def default_targets() -> list[str]:
    return [name for name, target in TARGETS.items() if target.default]


def quick_targets() -> list[str]:
    return [name for name, target in TARGETS.items() if target.quick]


# The papers' targets. Quick: the banana (NNgHMC's 2-d showcase; its plot needs the trained
# surrogate) and eight schools non-centred (a real posterior), both cheap to sample.
register(BenchTarget(
    "gaussian_2d_scg", testing.strongly_correlated_gaussian,
    "L2HMC's 2-d strongly correlated Gaussian, variances 1e2 / 1e-1 rotated by pi/4 (analytic)",
))
register(BenchTarget(
    "gaussian_50d_icg", lambda: testing.ill_conditioned_gaussian(50),
    "L2HMC's 50-d ill-conditioned Gaussian, diagonal variances 1e-2 .. 1e2 (analytic)",
    skip=(_NF_SKIP,),
))
register(BenchTarget(
    "gaussian_20d_rotated", lambda: testing.rotated_gaussian(20),
    "20-d Gaussian, eigenvalues log-spaced 1e-2 .. 1e2 under a random rotation (analytic)",
))
register(BenchTarget(
    "funnel_20d_s1", lambda: testing.funnel(20, sigma=1.0),
    "Neal's funnel, 20-d, sigma = 1 (analytic)",
    skip=(_NF_SKIP, _L2HMC_SKIP, _ENTROPY_SKIP),
))
register(BenchTarget(
    "funnel_20d_s3", lambda: testing.funnel(20, sigma=3.0),
    "Neal's funnel, 20-d, sigma = 3; sd of x not checked (heavy tails), v checked (analytic)",
    draws=1000,  # NUTS's trees are long here: keep the cell within budget
    keep_trained=True,  # NeuTraHMC's map, for funnel_transport_scale.png
))
register(BenchTarget(
    "banana", lambda: testing.banana(1.0, 0.1, 1.0),
    "NNgHMC's banana, A = 1, B = 0.1, C = 1 (analytic; Rosenbrock reading of the constants)",
    quick=True, keep_trained=True,
))
register(BenchTarget(
    "eight_schools_nc", testing.eight_schools_noncentered,
    "posteriordb eight_schools_noncentered (Stan reference draws)", quick=True,
    skip=(_NF_SKIP, _L2HMC_SKIP, _ENTROPY_SKIP), suites=(_ROBUSTNESS,),
))
register(BenchTarget(
    "eight_schools_c", testing.eight_schools_centered,
    "eight schools, centred: a funnel (posteriordb non-centred reference, same posterior)",
    skip=(_NF_SKIP, _L2HMC_SKIP, _ENTROPY_SKIP), suites=(_ROBUSTNESS,),
))
register(BenchTarget(
    "varying_intercepts_c40", lambda: testing.centered_varying_intercepts(40),
    "centred varying intercepts, 40 simulated groups: a funnel (analytic by quadrature over tau)",
    skip=(_NF_SKIP, _L2HMC_SKIP, _ENTROPY_SKIP), default=False,
))
register(BenchTarget(
    "garch11", testing.garch11,
    "posteriordb garch11: GARCH(1,1), T = 200, interval constraints (Stan reference)",
    draws=1000, skip=(_NF_SKIP, _L2HMC_SKIP, _ENTROPY_SKIP), suites=(_ROBUSTNESS,),
))
register(BenchTarget(
    "german_credit", testing.german_credit,
    "logistic regression, 1000 x 25 (inference-gym Stan reference)",
    draws=1000, skip=(_NF_SKIP, _L2HMC_SKIP), suites=(_ROBUSTNESS,),
))
# Ours, not the papers': run when named.
register(BenchTarget(
    "gaussian_10d", lambda: testing.correlated_gaussian(10),
    "10-d dense Gaussian, condition number 100, rotated (analytic)", default=False,
))
register(BenchTarget(
    "constrained", testing.constrained,
    "log, logodds, interval, simplex transforms, pm.Data (analytic)", default=False,
))
register(BenchTarget(
    "gp_regression", testing.gp_regression,
    "GP regression, Matern 3/2, 500 x 4, marginal likelihood (500 x 500 Cholesky); no reference",
    default=False,
))
register(BenchTarget(
    "logistic_50k", testing.logistic_regression_50k,
    "logistic regression, 50,000 x 200, simulated; no reference", default=False,
))
register(BenchTarget(
    "garch21", testing.garch21,
    "GARCH(2,1), T = 1000, simulated, scan recursion; no reference", default=False,
))
# The rest of the robustness suite: posteriordb posteriors, run by --suite robustness.
for _name, _description in (
    ("ark", "posteriordb arK: AR(5), T = 200"),
    ("earn_height", "posteriordb earn_height: earnings on height, raw scales 10^4 apart, flat priors"),
    ("kidscore_interaction", "posteriordb kidscore_interaction: uncentred interaction regression"),
    ("kidscore_interaction_c", "posteriordb kidscore_interaction_c: the same, centred predictors"),
    ("mesquite", "posteriordb mesquite: badly conditioned regression, 46 rows, flat priors"),
    ("nes1996", "posteriordb nes: party identification, 1,043 rows, flat priors"),
    ("sblrc_blr", "posteriordb sblrc blr: linear regression 100 x 5"),
    ("gp_regr", "posteriordb gp_regr: GP regression on 11 points, squared-exponential kernel"),
    ("hmm_example", "posteriordb hmm_example: two-state Gaussian HMM, forward algorithm"),
    ("hmm_drive_0", "posteriordb hmm_drive_0: two-state HMM, exponential emissions, 416 steps"),
):
    register(BenchTarget(_name, testing.REFERENCES[_name], _description + " (Stan reference draws)",
                         default=False, suites=(_ROBUSTNESS,)))
