"""Benchmarks: our step methods against PyMC's NUTS and nutpie, in one run on one machine.

Run from the repository root::

    python -m benchmarks --quick          # three targets, short chains, ~1-2 minutes
    python -m benchmarks                  # every default target, 4 chains x 2000 draws
    python -m benchmarks --targets gaussian_10d,garch11 --samplers pymc_nuts,jaxhmc
    python -m benchmarks --list           # what is registered

For every (target, sampler) it prints min bulk and tail ESS, ESS per gradient evaluation,
ESS per second of total wall time, acceptance, divergences, max |z| against the target's
reference and max R-hat, then the per-draw cost of ``JaxHMC`` under ``pm.sample`` versus
``pns.sample``; results go to ``benchmarks/results/`` as JSON and Markdown.

Targets live in ``targets.py`` (``TARGETS``), samplers in ``samplers.py`` (``SAMPLERS``);
adding either is one ``register(...)`` line. ``metrics.py`` turns a result into a row,
``overhead.py`` holds the driver comparison, ``report.py`` the tables and files.
"""

from benchmarks.samplers import SAMPLERS, Sampler, via_fast_driver, via_pm_sample
from benchmarks.targets import TARGETS, BenchTarget

__all__ = ["SAMPLERS", "TARGETS", "BenchTarget", "Sampler", "via_fast_driver", "via_pm_sample"]
