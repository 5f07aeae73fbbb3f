"""From one sampler run to the numbers in one row of the table.

ESS is ArviZ's rank-normalised bulk and tail ESS (Vehtari et al. 2021), the minimum over
every scalar of the posterior (free variables in the constrained space and Deterministics;
nutpie's extra ``*_log__`` copies are left out). Costs follow ``docs/algorithms.md``:

* ESS per gradient: min bulk ESS over the number of true gradient evaluations of the draw
  phase, summed over chains (``ess_per_grad``); the same including warm-up and training
  (``ess_per_grad_total``). Surrogate/network evaluations are counted separately.
* ESS per second: min bulk ESS over the wall time of the draw phase (``ess_per_second_sampling``)
  and of the whole call, compilation, warm-up and training included (``ess_per_second``).
* ESS per MH step: min bulk ESS over chains × draws (every method here makes one MH test,
  or one NUTS transition, per draw).

Training gradients. The learned samplers train during warm-up; what their training costs in
true gradients is read from their stats:

* a ``training_grad_evals`` stat (L2HMC, EntropyFlowMC: forward gradients of the training
  ensemble), summed over warm-up and draws, is added to the total;
* NNgHMC (recognised by its ``n_surrogate_evals`` stat) fits its network on the pairs its
  warm-up trajectories recorded, so those gradients are already in warm-up ``n_grad_evals``,
  and its assessments' gradients are added to ``n_grad_evals`` by the step itself;
* a sampler that trains (a ``training``/``training_*`` stat) but reports neither leaves its
  total incomplete: ``ess_per_grad_total_complete`` is False and the table marks the cell.

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

__all__ = ["Groups", "cell_metrics", "min_over_scalars", "result_groups", "training_gradients", "training_time"]


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


TRAINING_GRAD_STAT = "training_grad_evals"
# Stats that show a sampler trains during warm-up (any of them present).
_TRAINING_STATS = ("training", "training_loss", "training_steps", "training_time")
# NNgHMC's own stat: its training fits pairs recorded on warm-up trajectories.
_SURROGATE_STAT = "n_surrogate_evals"


def _has(stats: xr.Dataset | None, name: str) -> bool:
    return stats is not None and name in stats


def training_gradients(groups: Groups, gradient_stat: str) -> tuple[float, bool, str]:
    """(true gradients spent on training beyond ``gradient_stat``, whether that is complete, how known)."""
    warm, draw = groups.warmup_sample_stats, groups.sample_stats
    if _has(warm, TRAINING_GRAD_STAT) or _has(draw, TRAINING_GRAD_STAT):
        total = sum(_stat_total(s, TRAINING_GRAD_STAT) or 0.0 for s in (warm, draw))
        return total, True, f"{TRAINING_GRAD_STAT} stat"
    if _has(draw, _SURROGATE_STAT):
        return 0.0, True, f"training data recorded on warm-up trajectories: in {gradient_stat}"
    if any(_has(s, name) for s in (warm, draw) for name in _TRAINING_STATS):
        return 0.0, False, "the sampler trains but reports no training gradients"
    return 0.0, True, "no training"


def training_time(groups: Groups) -> float | None:
    """Training wall time: the fast driver's attribute, else the sum of ``training_time`` stats."""
    attrs = groups.posterior.attrs
    if "training_time" in attrs:
        return float(attrs["training_time"])
    stats = [s for s in (groups.warmup_sample_stats, groups.sample_stats) if _has(s, "training_time")]
    if not stats:
        return None
    return float(sum(np.nansum(np.asarray(s["training_time"].values, dtype=float)) for s in stats))


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
    sampling_time: float | None = None,
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
    train_grads, train_complete, train_source = training_gradients(groups, gradient_stat)
    total_grads = None if warmup_grads is None else grads + warmup_grads + train_grads
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
        "ess_per_step": ess_bulk / (chains * draws),
        "grad_evals": grads,
        "grad_evals_warmup": warmup_grads,
        "grad_evals_training": train_grads,
        "grad_evals_total": total_grads,
        "training_grads_source": train_source,
        "grad_evals_per_draw": grads / (chains * draws),
        "ess_per_grad": _ratio(ess_bulk, grads),
        "ess_tail_per_grad": _ratio(ess_tail, grads),
        "ess_per_grad_total": _ratio(ess_bulk, total_grads),
        "ess_per_grad_total_complete": bool(train_complete and total_grads is not None),
        "surrogate_evals": surrogates,
        "ess_per_second": _ratio(ess_bulk, wall_time),
        "ess_tail_per_second": _ratio(ess_tail, wall_time),
        "ess_per_second_sampling": _ratio(ess_bulk, sampling_time),
        "acceptance": acceptance,
        "divergences": divergences,
        "wall_time": wall_time,
        "sampling_time": sampling_time,
        "training_time": training_time(groups),
        "cpu_time": cpu_time,
        "compile_time": compile_time,
        "max_abs_z": math.nan,
        "max_abs_z_param": "",
        "exactness_passed": None,
        "exactness_problems": [],
    }
    if reference is not None and len(reference) == 0:
        metrics["exactness_problems"] = ["no reference moments: nothing checked"]
    elif reference is not None:
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
