"""Posterior draws as an ``xarray.Dataset`` and the ArviZ diagnostics on them, on both ArviZ lines.

PyMC 5 returns ``arviz.InferenceData`` (ArviZ 0.x), PyMC 6 an ``xarray.DataTree`` (ArviZ 1.x).
Both expose the posterior group as ``result.posterior``: a Dataset in the first case, a tree
node in the second. Everything here works on a plain Dataset with ``chain`` and ``draw``
dimensions, which both ArviZ lines accept.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import xarray as xr

SAMPLE_DIMS = ("chain", "draw")


def posterior_dataset(result: object) -> xr.Dataset:
    """The posterior group of whatever ``pm.sample`` returned, as an ``xarray.Dataset``.

    Accepts ``arviz.InferenceData``, ``xarray.DataTree`` (or a node of one) and a Dataset
    with ``chain`` and ``draw`` dimensions (returned as is).
    """
    if isinstance(result, xr.Dataset):
        posterior = result
    else:
        group = getattr(result, "posterior", None)
        if group is None and hasattr(result, "to_dataset"):  # the posterior node itself
            group = result
        if group is None:
            raise TypeError(
                f"expected the result of pm.sample (InferenceData or DataTree) or an xarray.Dataset, "
                f"got {type(result).__name__}; with return_inferencedata=False convert the trace "
                "with pm.to_inference_data first"
            )
        # A DataTree node is not a Dataset; ``to_dataset`` copies its variables and coordinates.
        posterior = group if isinstance(group, xr.Dataset) else group.to_dataset()
    missing = [dim for dim in SAMPLE_DIMS if dim not in posterior.dims]
    if missing:
        raise ValueError(f"posterior has no {missing} dimension(s); dims are {dict(posterior.sizes)}")
    return posterior


def _as_float(ds: xr.Dataset) -> xr.Dataset:
    return ds.astype(float)


def mcse_mean(ds: xr.Dataset) -> xr.Dataset:
    """ArviZ's MCSE of the posterior mean (``az.mcse(method="mean")``)."""
    return az.mcse(_as_float(ds), method="mean")


def mcse_sd(ds: xr.Dataset) -> xr.Dataset:
    """ArviZ's MCSE of the posterior sd, computed from ``az.ess``.

    This is the delta-method formula both ArviZ lines use for ``az.mcse(method="sd")``:
    with c = (x - mean)², Var(sd) ≈ Var(mean of c) / (4 Var(x)), where Var(mean of c) uses
    the effective sample size of c. We compute it here because ArviZ 0.23's own
    ``mcse(method="sd")`` raises ``TypeError`` when numba is installed alongside NumPy ≥ 2.3
    (it calls ``float`` on a 1-element array). Numerically identical to ArviZ 1.x's result.
    """
    ds = _as_float(ds)
    centred_sq = (ds - ds.mean(SAMPLE_DIMS)) ** 2
    ess = az.ess(centred_sq, method="mean")
    var = centred_sq.mean(SAMPLE_DIMS)
    var_of_var = ((centred_sq**2).mean(SAMPLE_DIMS) - var**2) / ess
    return np.sqrt(var_of_var / var / 4)


def ess(ds: xr.Dataset, method: str) -> xr.Dataset:
    """ArviZ's rank-normalised effective sample size (``method`` "bulk" or "tail")."""
    return az.ess(_as_float(ds), method=method)


def rhat(ds: xr.Dataset) -> xr.Dataset:
    """ArviZ's rank-normalised split R-hat."""
    return az.rhat(_as_float(ds))
