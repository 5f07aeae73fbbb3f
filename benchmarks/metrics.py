"""From one sampler run to the numbers in one row of the table.

ESS is ArviZ's rank-normalised bulk and tail ESS (Vehtari et al. 2021), the minimum over
every scalar of the posterior (free variables in the constrained space and Deterministics;
nutpie's extra ``*_log__`` copies are left out). Costs follow ``docs/algorithms.md``:

* ESS per gradient: min bulk ESS over the number of true gradient evaluations of the draw
  phase, summed over chains (``ess_per_grad``); the same including warm-up
  (``ess_per_grad_total``). Surrogate/network evaluations are counted separately.
* ESS per second: min bulk ESS over the wall time of the whole call, compilation, warm-up
  and sampling included.
* ESS per draw: min bulk ESS over chains × draws (per MH step for one-MH-per-draw methods).

max |z| is :func:`pymc_neural_steps.testing.check_exactness` against the target's reference.
Everything here works on plain ``xarray.Dataset`` groups, so it is the same code for
``arviz.InferenceData`` (PyMC 5) and ``xarray.DataTree`` (PyMC 6), and testable without
sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import arviz as az
import numpy as np
import xarray as xr

from pymc_neural_steps._compat import group_dataset, has_group
from pymc_neural_steps.testing import Reference, check_exactness, scalar_key

__all__ = ["Groups", "cell_metrics", "min_over_scalars", "result_groups"]


class Groups(NamedTuple):
    """The three groups a row needs: posterior, draw-phase stats, warm-up stats (or None)."""

    posterior: xr.Dataset
    sample_stats: xr.Dataset
    warmup_sample_stats: xr.Dataset | None = None


def result_groups(result: Any) -> Groups:
    """Split what ``pm.sample``, ``pns.sample`` or ``nutpie.sample`` returned into :class:`Groups`."""
    warmup = group_dataset(result, "warmup_sample_stats") if has_group(result, "warmup_sample_stats") else None
    return Groups(group_dataset(result, "posterior"), group_dataset(result, "sample_stats"), warmup)


def min_over_scalars(ds: xr.Dataset, *, largest: bool = False) -> tuple[float, str]:
    """The smallest (or largest) value over every scalar of every variable, and its key.

    A NaN wins: ArviZ returns NaN for constant or non-finite draws, which must show up
    in the table rather than be skipped.
    """
    best_value, best_key = (-math.inf if largest else math.inf), ""
    for name, array in ds.data_vars.items():
        values = np.asarray(array.values, dtype=float)
        for index in np.ndindex(values.shape):
            value = float(values[index])
            if math.isnan(value):
                return value, scalar_key(name, index)
            if (value > best_value) if largest else (value < best_value):
                best_value, best_key = value, scalar_key(name, index)
    return best_value, best_key


def _stat_total(stats: xr.Dataset | None, name: str | None) -> float | None:
    if stats is None or name is None or name not in stats:
        return None
    return float(np.asarray(stats[name].values, dtype=float).sum())


def _ratio(numerator: float, denominator: float | None) -> float:
    if denominator is None or not denominator > 0:
        return math.nan
    return numerator / denominator


def cell_metrics(
    groups: Groups,
    *,
    var_names: Sequence[str],
    reference: Reference | None,
    acceptance_stat: str,
    gradient_stat: str,
    surrogate_stat: str | None = None,
    wall_time: float,
    cpu_time: float | None = None,
    compile_time: float | None = None,
) -> dict[str, Any]:
    """Every number of one (target, sampler) cell, as a JSON-ready dict."""
    names = [name for name in var_names if name in groups.posterior.data_vars]
    if not names:
        raise ValueError(f"none of {list(var_names)} is in the posterior ({list(groups.posterior.data_vars)})")
    posterior = groups.posterior[names].astype(float)
    stats = groups.sample_stats
    chains, draws = int(posterior.sizes["chain"]), int(posterior.sizes["draw"])

    ess_bulk, ess_bulk_key = min_over_scalars(az.ess(posterior, method="bulk"))
    ess_tail, ess_tail_key = min_over_scalars(az.ess(posterior, method="tail"))
    r_hat, r_hat_key = min_over_scalars(az.rhat(posterior), largest=True)

    grads = _stat_total(stats, gradient_stat)
    if grads is None:
        raise KeyError(f"gradient stat {gradient_stat!r} not in sample_stats ({list(stats.data_vars)})")
    warmup_grads = _stat_total(groups.warmup_sample_stats, gradient_stat)
    surrogates = _stat_total(stats, surrogate_stat)
    acceptance = float(np.asarray(stats[acceptance_stat].values, dtype=float).mean()) if acceptance_stat in stats else math.nan
    divergences = int(np.asarray(stats["diverging"].values).sum()) if "diverging" in stats else None

    metrics: dict[str, Any] = {
        "chains": chains,
        "draws": draws,
        "ess_bulk": ess_bulk,
        "ess_bulk_param": ess_bulk_key,
        "ess_tail": ess_tail,
        "ess_tail_param": ess_tail_key,
        "r_hat_max": r_hat,
        "r_hat_param": r_hat_key,
        "ess_per_draw": ess_bulk / (chains * draws),
        "grad_evals": grads,
        "grad_evals_warmup": warmup_grads,
        "grad_evals_per_draw": grads / (chains * draws),
        "ess_per_grad": _ratio(ess_bulk, grads),
        "ess_tail_per_grad": _ratio(ess_tail, grads),
        "ess_per_grad_total": _ratio(ess_bulk, None if warmup_grads is None else grads + warmup_grads),
        "surrogate_evals": surrogates,
        "ess_per_second": _ratio(ess_bulk, wall_time),
        "ess_tail_per_second": _ratio(ess_tail, wall_time),
        "acceptance": acceptance,
        "divergences": divergences,
        "wall_time": wall_time,
        "cpu_time": cpu_time,
        "compile_time": compile_time,
        "max_abs_z": math.nan,
        "max_abs_z_param": "",
        "exactness_passed": None,
        "exactness_problems": [],
    }
    if reference is not None:
        report = check_exactness(groups.posterior, reference)
        worst = report.worst(1)
        metrics.update(
            max_abs_z=report.max_abs_z,
            max_abs_z_param=f"{worst[0].key} {worst[0].statistic}" if worst else "",
            z_threshold=report.threshold,
            exactness_passed=report.passed,
            exactness_problems=list(report.problems),
        )
    return metrics
