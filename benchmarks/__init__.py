"""Benchmarks: our step methods against PyMC's NUTS and nutpie, in one run on one machine.

Run from the repository root::

    python -m benchmarks --quick          # two targets, short chains, under 5 minutes
    python -m benchmarks --docs docs      # the full suite (make bench): every default target, < 45 minutes
    python -m benchmarks --targets banana,garch11 --samplers pymc_nuts,jaxhmc
    python -m benchmarks --list           # what is registered, with each target's run length
    python -m benchmarks.plots RESULTS.json --out docs   # redraw a run's figures

For every (target, sampler) it reports min bulk and tail ESS, ESS per MH step, ESS per
gradient evaluation (draw phase, and with warm-up and training), ESS per second (draw phase,
and total wall time), acceptance, divergences, max R-hat and max |z| against the target's
reference; the full run adds the per-draw cost of ``JaxHMC`` under ``pm.sample`` versus
``pns.sample``. Results go to ``benchmarks/results/`` as JSON and Markdown, with figures.

Targets live in ``targets.py`` (``TARGETS``), samplers in ``samplers.py`` (``SAMPLERS``);
adding either is one ``register(...)`` line. ``metrics.py`` turns a result into a row,
``artifacts.py`` keeps traces and training curves, ``plots.py`` draws the figures,
``overhead.py`` holds the driver comparison, ``report.py`` the tables and files.
"""

from benchmarks.samplers import SAMPLERS, Sampler, via_fast_driver, via_pm_sample
from benchmarks.targets import TARGETS, BenchTarget

__all__ = ["SAMPLERS", "TARGETS", "BenchTarget", "Sampler", "via_fast_driver", "via_pm_sample"]
