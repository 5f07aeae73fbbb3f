"""Prior sensitivity analysis with a trained NNgHMC: one warm-up, many priors.

Li, Holbrook, Shahbaba & Baldi (2019), §4.2 (``algorithms.md`` §1). NNgHMC's network stands
for the gradient of the log likelihood (``surrogate.py``); the prior's gradient is computed
exactly for whichever model is sampled. A model that differs from the trained one only in
its priors is therefore sampled with the trained network and no retraining, and with the
MH test on its own density it is sampled exactly (``NNgHMC.from_trained``).

``sensitivity_analysis`` runs that for several prior variants and puts the posteriors side
by side: a table of posterior means and sds per parameter and variant, per-variant sampler
diagnostics (acceptance, true gradients spent), and an ArviZ forest plot across variants.
The forest plot uses ``arviz.plot_forest`` on either ArviZ line: ArviZ 0.x (PyMC 5) takes a
list of InferenceData with ``model_names``; ArviZ 1.x (PyMC 6), whose ``plot_forest`` is
``arviz_plots.plot_forest``, takes a dict of DataTrees and returns a ``PlotCollection``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pymc as pm

from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.steps.nnghmc import NNgHMC, TrainedNNgHMC

__all__ = ["SensitivityResult", "plot_forest", "sensitivity_analysis"]

_SAMPLE_DIMS = ("chain", "draw")
RHAT_WARNING = 1.05  # above this, a variant's chains disagree and the user is told so


def _label(name: str, index: tuple[int, ...]) -> str:
    return name if not index else f"{name}[{', '.join(str(i) for i in index)}]"


def _moments(result, var_names: Sequence[str] | None) -> dict[str, tuple[float, float]]:
    posterior = group_dataset(result, "posterior")
    names = list(posterior.data_vars) if var_names is None else list(var_names)
    out = {}
    for name in names:
        values = np.asarray(posterior[name].values, dtype=float)
        flat = values.reshape(values.shape[0] * values.shape[1], *values.shape[2:])
        means, sds = flat.mean(axis=0), flat.std(axis=0, ddof=1)
        for index in np.ndindex(means.shape):
            out[_label(name, index)] = (float(means[index]), float(sds[index]))
    return out


def _diagnostics(result, wall_time: float) -> dict[str, float]:
    stats = group_dataset(result, "sample_stats")

    def total(name):
        return float(stats[name].values.sum()) if name in stats else float("nan")

    def mean(name):
        return float(stats[name].values.mean()) if name in stats else float("nan")

    return {
        "acceptance_rate": mean("acceptance_rate"),
        "step_size": mean("step_size"),
        "n_steps": mean("n_steps"),
        "n_grad_evals": total("n_grad_evals"),
        "n_surrogate_evals": total("n_surrogate_evals"),
        "surrogate_nonfinite": total("surrogate_nonfinite"),
        "divergences": total("diverging"),
        "max_rhat": _max_rhat(result),
        "wall_time": wall_time,
    }


def _max_rhat(result) -> float:
    """The largest rank-normalised split R-hat; infinite when some chain never moved."""
    import arviz as az

    posterior = group_dataset(result, "posterior")
    if posterior.sizes.get("chain", 1) < 2:
        return float("nan")
    with warnings.catch_warnings():  # chains that never move: 0/0 inside ArviZ
        warnings.simplefilter("ignore", RuntimeWarning)
        values = az.rhat(posterior.astype(float))
    largest = [np.asarray(values[name].values, float) for name in values.data_vars]
    flat = np.concatenate([v.reshape(-1) for v in largest]) if largest else np.zeros(0)
    if flat.size and not np.all(np.isfinite(flat)):
        return float("inf")
    return float(flat.max()) if flat.size else float("nan")


def plot_forest(results: Mapping[str, Any], var_names: Sequence[str] | None = None, **kwargs):
    """An ArviZ forest plot of several posteriors, one colour per name in ``results``.

    ArviZ 1.x: ``arviz.plot_forest(dict_of_datatrees, ...)`` (a ``PlotCollection``);
    ArviZ 0.x: ``arviz.plot_forest(list, model_names=names, ...)`` (matplotlib axes).
    Extra keyword arguments go to ArviZ unchanged.
    """
    import arviz as az

    names = list(results)
    if int(az.__version__.split(".")[0]) >= 1:
        kwargs.setdefault("combined", True)
        return az.plot_forest(dict(results), var_names=var_names, **kwargs)
    kwargs.setdefault("combined", True)
    return az.plot_forest(
        [results[name] for name in names], model_names=names, var_names=var_names, **kwargs
    )


@dataclass
class SensitivityResult:
    """The posteriors of several prior variants, sampled with one trained surrogate.

    ``results``     variant name -> what the sampler returned (InferenceData / DataTree);
    ``table``       posterior mean and sd, one row per scalar parameter, columns
                    (variant, "mean" | "sd");
    ``diagnostics`` one row per variant: mean acceptance, step size and steps per draw,
                    total true gradients and surrogate evaluations in the draws, rejected
                    non-finite surrogate proposals, divergences, the largest R-hat
                    (a variant above 1.05 also warns: its posterior left the region the
                    surrogate was trained on), wall time;
    ``forest``      the forest plot made by ``sensitivity_analysis(plot=True)``, else None.
    """

    results: dict[str, Any]
    table: pd.DataFrame
    diagnostics: pd.DataFrame
    forest: Any = field(default=None, repr=False)

    def plot_forest(self, var_names: Sequence[str] | None = None, **kwargs):
        """A forest plot across the variants (see :func:`plot_forest`)."""
        return plot_forest(self.results, var_names=var_names, **kwargs)


def sensitivity_analysis(
    step: NNgHMC | TrainedNNgHMC | str | os.PathLike,
    models: Mapping[str, pm.Model],
    *,
    var_names: Sequence[str] | None = None,
    sampler: str = "fast",
    plot: bool = True,
    step_options: dict | None = None,
    **sample_kwargs,
) -> SensitivityResult:
    """Sample every model in ``models`` with the surrogate trained in ``step``, no retraining.

    Parameters
    ----------
    step
        A trained ``NNgHMC`` (after sampling with it in this process), a ``TrainedNNgHMC``,
        or the directory of a saved one (``NNgHMC.save``).
    models
        Prior variants by name. Each must have the parameter layout of the trained model
        (otherwise ``LayoutMismatchError`` names the variable) and should share its
        likelihood. Include the original model to see it in the same table.
    var_names
        Posterior variables to compare (default: all of them, Deterministics included).
    sampler
        ``"fast"`` (``pymc_neural_steps.sample``, all chains at once) or ``"pymc"``
        (``pm.sample(step=...)``).
    plot
        Make the forest plot (``result.forest``); needs a plotting backend for ArviZ.
    step_options
        Settings for the new steps (e.g. ``{"target_accept": 0.9}``).
    sample_kwargs
        Passed to the sampler (``draws``, ``tune``, ``chains``, ``random_seed``, ...).
        Warm-up (``tune``) adapts step size, mass matrix and path length on the surrogate
        only, at no true gradient; keep some when a prior changes the posterior's scale.

    Returns
    -------
    SensitivityResult
    """
    if sampler not in ("fast", "pymc"):
        raise ValueError(f"sampler must be 'fast' or 'pymc', got {sampler!r}")
    if not models:
        raise ValueError("models is empty: give at least one prior variant")
    step_options = dict(step_options or {})
    results: dict[str, Any] = {}
    rows: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        if isinstance(step, str | os.PathLike):
            new_step = NNgHMC.load(step, model=model, **step_options)
        else:
            new_step = NNgHMC.from_trained(step, model=model, **step_options)
        start = time.perf_counter()
        if sampler == "fast":
            from pymc_neural_steps.sampling import sample

            result = sample(new_step, model=model, **sample_kwargs)
        else:
            with model:
                quiet = {"progressbar": False, "compute_convergence_checks": False}
                result = pm.sample(step=new_step, **{**quiet, **sample_kwargs})
        results[name] = result
        rows[name] = _diagnostics(result, time.perf_counter() - start)
        if rows[name]["max_rhat"] > RHAT_WARNING:
            rhat = rows[name]["max_rhat"]
            shown = "some chains never moved" if not np.isfinite(rhat) else (
                f"max R-hat {rhat:.2f}" if rhat < 100 else "max R-hat above 100"
            )
            warnings.warn(
                f"prior variant {name!r}: the chains disagree ({shown}). This prior moves the posterior out of the "
                "region the surrogate was trained on, where its gradient is wrong: the draws "
                "are still exact but mix too slowly to trust. Train a new NNgHMC on this "
                "variant instead (pm.sample(step=NNgHMC()) under its model).",
                UserWarning,
                stacklevel=2,
            )

    moments = {name: _moments(result, var_names) for name, result in results.items()}
    labels = list(dict.fromkeys(label for m in moments.values() for label in m))
    columns = pd.MultiIndex.from_product([list(results), ["mean", "sd"]], names=["variant", "stat"])
    table = pd.DataFrame(
        [
            [value for name in results for value in moments[name].get(label, (np.nan, np.nan))]
            for label in labels
        ],
        index=pd.Index(labels, name="parameter"),
        columns=columns,
    )
    diagnostics = pd.DataFrame.from_dict(rows, orient="index")
    diagnostics.index.name = "variant"

    forest = None
    if plot:
        try:
            forest = plot_forest(results, var_names=var_names)
        except ImportError as error:  # no plotting backend installed
            warnings.warn(f"no forest plot: {error}", UserWarning, stacklevel=2)
    return SensitivityResult(results, table, diagnostics, forest)
