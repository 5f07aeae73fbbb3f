"""The samplers the benchmark compares, in one registry.

A :class:`Sampler` knows how to run itself on a PyMC model and which of its sample stats
hold the acceptance probability and the number of true gradient evaluations per draw.
``run`` returns the sampler's own result (what ``pm.sample`` returns, or nutpie's) with the
wall-clock time of everything the user waits for (compilation, warm-up, training and
sampling), the time of the draw phase alone, and the step object it ran (for the plots).

Two factories cover every step method of this package, so a new method is one line::

    register(via_pm_sample("nnghmc_pymc", lambda: pns.NNgHMC()))
    register(via_fast_driver("nnghmc", lambda: pns.NNgHMC(), surrogate_stat="n_surrogate_evals"))

Fairness: ``pm.sample`` and nutpie get ``cores`` (default 1), so every sampler computes on
one core and chains run one after another (PyMC) or in one thread (nutpie), while the JAX
samplers run all chains in one process (vmapped in ``pns.sample``). PyMC's NUTS is asked for
explicitly with ``nuts_sampler="pymc"``: PyMC 6 otherwise hands NUTS to nutpie when nutpie
is installed. Warm-up draws are kept so that warm-up gradients can be counted too.

Draw-phase time ("sampling only"): ``pns.sample`` measures it itself (``sampling_time`` in
the result's attributes: the draw chunks, their compilation included); under ``pm.sample`` a
callback stamps the last warm-up and the last draw of every chain (chains run one after
another with ``cores=1``); nutpie reports no timings, so its draw-phase time is estimated as
its sampling wall time times the draw phase's share of its gradient evaluations.

``default=False`` keeps a sampler out of runs that name no samplers (it still runs when
named with ``--samplers``).
"""

from __future__ import annotations

import importlib.util
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymc as pm

import pymc_neural_steps as pns
from pymc_neural_steps._compat import group_dataset

__all__ = [
    "SAMPLERS",
    "Clock",
    "PhaseClock",
    "Run",
    "Sampler",
    "Settings",
    "default_samplers",
    "register",
    "via_fast_driver",
    "via_nutpie",
    "via_pm_sample",
]


@dataclass(frozen=True)
class Settings:
    draws: int
    tune: int
    chains: int
    seed: int
    cores: int = 1


@dataclass
class Run:
    """What one sampler call produced and cost.

    ``wall_time`` covers the whole call including compilation; ``compile_time`` is the part
    of it spent in a separate compile call, for samplers that have one (nutpie), else None
    (compilation then happens inside the sampling call and is part of ``wall_time``).
    ``cpu_time`` is the process CPU time over the same span (all threads); cpu/wall shows
    how many cores a sampler used and how much the machine's load slowed it down.
    ``sampling_time`` is the draw phase alone (None when unknown; ``sampling_time_source``
    says how it was obtained). ``step`` is the step method object, if any.
    """

    result: Any
    wall_time: float
    cpu_time: float
    compile_time: float | None = None
    sampling_time: float | None = None
    sampling_time_source: str = ""
    step: Any = None


class Clock:
    """Wall and process CPU time over a ``with`` block."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


@dataclass(frozen=True)
class Sampler:
    """A sampler and where its stats live.

    ``gradient_stat`` counts true gradient evaluations per draw (for NUTS: leapfrog steps,
    one gradient each). ``surrogate_stat`` counts network/surrogate evaluations for methods
    that have them; they are reported separately, never added to the gradients.
    ``requires`` names modules that must be importable; a missing one makes the cell fail
    with a note instead of stopping the run.
    """

    name: str
    description: str
    run: Callable[[pm.Model, Settings], Run]
    acceptance_stat: str = "acceptance_rate"
    gradient_stat: str = "n_grad_evals"
    surrogate_stat: str | None = None
    requires: tuple[str, ...] = ()
    default: bool = True

    def missing_requirements(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    if sampler.name in SAMPLERS:
        raise ValueError(f"sampler {sampler.name!r} is already registered")
    SAMPLERS[sampler.name] = sampler
    return sampler


class PhaseClock:
    """A ``pm.sample`` callback: per chain, the time of its last warm-up and last draw.

    With ``cores=1`` chains run one after another, so the draw phase of the whole call is
    the sum over chains of (last draw - last warm-up iteration). Without warm-up the first
    draw's stamp stands in for the start (one draw of the chain goes uncounted).
    """

    def __init__(self):
        self.last_tune: dict[int, float] = {}
        self.first_draw: dict[int, float] = {}
        self.last_draw: dict[int, float] = {}
        self.draws: dict[int, int] = defaultdict(int)

    def __call__(self, trace, draw) -> None:
        now = time.perf_counter()
        if draw.tuning:
            self.last_tune[draw.chain] = now
        else:
            self.first_draw.setdefault(draw.chain, now)
            self.last_draw[draw.chain] = now
            self.draws[draw.chain] += 1

    def draw_phase(self) -> float | None:
        if not self.last_draw:
            return None
        return sum(end - self.last_tune.get(chain, self.first_draw[chain]) for chain, end in self.last_draw.items())


def default_samplers() -> list[str]:
    return [name for name, sampler in SAMPLERS.items() if sampler.default]


def _pm_sample(model: pm.Model, settings: Settings, make_step: Callable | None) -> Run:
    phases = PhaseClock()
    with Clock() as clock, model:
        step = make_step() if make_step is not None else None
        result = pm.sample(
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            cores=settings.cores,
            random_seed=settings.seed,
            step=step,
            nuts_sampler="pymc",
            progressbar=False,
            compute_convergence_checks=False,  # diagnostics are the benchmark's job, untimed
            discard_tuned_samples=False,
            callback=phases,
        )
    return Run(result, clock.wall, clock.cpu, sampling_time=phases.draw_phase(),
               sampling_time_source="pm.sample callback: last warm-up to last draw, per chain", step=step)


def via_pm_sample(name: str, make_step: Callable[[], Any], description: str = "", **stats: Any) -> Sampler:
    """A step method of this package run by ``pm.sample(step=make_step())``."""
    return Sampler(
        name,
        description or f"{name}: pm.sample(step=...), PyMC's per-draw Python loop",
        lambda model, settings: _pm_sample(model, settings, make_step),
        **stats,
    )


def via_fast_driver(name: str, make_step: Callable[[], Any], description: str = "", **stats: Any) -> Sampler:
    """A step method of this package run by ``pns.sample``: chains vmapped, draws scanned."""

    def run(model: pm.Model, settings: Settings) -> Run:
        with Clock() as clock, model:
            step = make_step()
            result = pns.sample(
                step,
                draws=settings.draws,
                tune=settings.tune,
                chains=settings.chains,
                random_seed=settings.seed,
                progressbar=False,
                discard_tuned_samples=False,
            )
        attrs = group_dataset(result, "posterior").attrs
        sampling_time = float(attrs["sampling_time"]) if "sampling_time" in attrs else None
        return Run(result, clock.wall, clock.cpu, sampling_time=sampling_time,
                   sampling_time_source="pns.sample's sampling_time: draw chunks incl. their compilation", step=step)

    return Sampler(name, description or f"{name}: pns.sample, chains vmapped in jitted lax.scan chunks", run, **stats)


def _gradient_share(result, stat: str = "n_steps") -> float | None:
    """The draw phase's share of all gradient evaluations of a run (warm-up kept)."""
    try:
        draw = float(group_dataset(result, "sample_stats")[stat].sum())
        warm = float(group_dataset(result, "warmup_sample_stats")[stat].sum())
    except (KeyError, AttributeError):
        return None
    return draw / (draw + warm) if draw + warm > 0 else None


def _run_nutpie(model: pm.Model, settings: Settings, *, flow: bool = False, low_rank: bool = False) -> Run:
    import nutpie

    with Clock() as compile_clock:
        if flow:
            # nutpie's normalising-flow adaptation needs its JAX backend (and flowjax).
            compiled = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax")
            compiled = compiled.with_transform_adapt()
        else:
            compiled = nutpie.compile_pymc_model(model)  # default numba backend
    with Clock() as sample_clock:
        result = nutpie.sample(
            compiled,
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            cores=settings.cores,
            seed=settings.seed,
            progress_bar=False,
            save_warmup=True,
            **({"transform_adapt": True} if flow else {}),
            **({"low_rank_modified_mass_matrix": True} if low_rank else {}),
        )
    share = _gradient_share(result)
    return Run(
        result,
        wall_time=compile_clock.wall + sample_clock.wall,
        cpu_time=compile_clock.cpu + sample_clock.cpu,
        compile_time=compile_clock.wall,
        sampling_time=None if share is None else share * sample_clock.wall,
        sampling_time_source="estimated: nutpie.sample's wall time x the draw phase's share of n_steps",
    )


register(Sampler(
    "pymc_nuts",
    "PyMC's NUTS, default settings (pm.sample, nuts_sampler='pymc')",
    lambda model, settings: _pm_sample(model, settings, None),
    gradient_stat="n_steps",  # PyMC's tree_size: leapfrog steps, one gradient each
))
def via_nutpie(name: str, description: str, *, requires=("nutpie",), default: bool = True,
               **options: bool) -> Sampler:
    """nutpie with ``_run_nutpie``'s ``options`` (flow=..., low_rank=...)."""
    return Sampler(
        name,
        description,
        lambda model, settings: _run_nutpie(model, settings, **options),
        acceptance_stat="mean_tree_accept",
        gradient_stat="n_steps",
        requires=requires,
        default=default,
    )


register(via_nutpie("nutpie", "nutpie, default numba backend (compile_pymc_model + sample)"))
register(via_nutpie(
    "nutpie_nf",
    "nutpie with its normalising-flow adaptation (JAX backend, transform_adapt=True; needs flowjax)",
    requires=("nutpie", "flowjax"), flow=True,
))
register(via_nutpie(
    "nutpie_lowrank",
    "nutpie with its low-rank mass-matrix adaptation (low_rank_modified_mass_matrix=True; robustness suite, run when named)",
    default=False, low_rank=True,
))
register(via_pm_sample(
    "jaxhmc_pymc", pns.JaxHMC, "JaxHMC via pm.sample(step=pns.JaxHMC()) (driver comparison; run when named)",
    default=False,
))
register(via_fast_driver("jaxhmc", pns.JaxHMC, "JaxHMC via pns.sample (fast driver)"))
register(via_fast_driver("nnghmc", pns.NNgHMC, "NNgHMC via pns.sample (fast driver, one pooled surrogate)", surrogate_stat="n_surrogate_evals"))
register(via_fast_driver("l2hmc", pns.L2HMC, "L2HMC via pns.sample (fast driver, one kernel trained on the pooled ensemble)"))
register(via_fast_driver("entropyflow", pns.EntropyFlowMC, "EntropyFlowMC via pns.sample (fast driver, one kernel trained on the pooled ensemble)"))
register(via_fast_driver("neutra", pns.NeuTraHMC, "NeuTraHMC via pns.sample (fast driver, one transport map trained for all chains)", default=False))
# The learned methods under pm.sample's per-chain loop (robustness suite; run when named).
register(via_pm_sample("nnghmc_pymc", pns.NNgHMC, "NNgHMC via pm.sample(step=pns.NNgHMC()) (run when named)",
                       surrogate_stat="n_surrogate_evals", default=False))
register(via_pm_sample("l2hmc_pymc", pns.L2HMC, "L2HMC via pm.sample(step=pns.L2HMC()) (run when named)", default=False))
register(via_pm_sample("entropyflow_pymc", pns.EntropyFlowMC,
                       "EntropyFlowMC via pm.sample(step=pns.EntropyFlowMC()) (run when named)", default=False))
register(via_pm_sample("neutra_pymc", pns.NeuTraHMC, "NeuTraHMC via pm.sample(step=pns.NeuTraHMC()) (run when named)", default=False))
