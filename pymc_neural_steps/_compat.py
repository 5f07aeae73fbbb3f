"""The differences between the PyMC 5 / ArviZ 0.x and PyMC 6 / ArviZ 1.x lines, in one place.

PyMC 5 returns ``arviz.InferenceData``; PyMC 6 returns an ``xarray.DataTree`` built by
``arviz_base``. Everything else in the package goes through these helpers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymc as pm
import xarray as xr
from pymc.backends.arviz import (
    coords_and_dims_for_inferencedata,
    find_constants,
    find_observations,
)

__all__ = ["PYMC_MAJOR", "build_result", "group_dataset", "has_group"]

PYMC_MAJOR = int(pm.__version__.split(".")[0])


def build_result(
    model: pm.Model,
    *,
    posterior: dict[str, np.ndarray],
    sample_stats: dict[str, np.ndarray],
    warmup_posterior: dict[str, np.ndarray] | None = None,
    warmup_sample_stats: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
):
    """What ``pm.sample`` would return for these draws on the installed PyMC."""
    coords, dims = coords_and_dims_for_inferencedata(model)
    observed = find_observations(model) or None
    constants = find_constants(model) or None
    attrs = dict(attrs or {})
    attrs.setdefault("inference_library", "pymc_neural_steps")
    save_warmup = warmup_posterior is not None

    if PYMC_MAJOR >= 6:
        from arviz_base import from_dict

        groups: dict[str, dict] = {"posterior": posterior, "sample_stats": sample_stats}
        if save_warmup:
            groups["warmup_posterior"] = warmup_posterior
            groups["warmup_sample_stats"] = warmup_sample_stats or {}
        if observed:
            groups["observed_data"] = observed
        if constants:
            groups["constant_data"] = constants
        group_attrs = {"posterior": attrs, "sample_stats": attrs}
        return from_dict(
            groups,
            coords=coords,
            dims=dims,
            sample_dims=["chain", "draw"],
            save_warmup=save_warmup,
            attrs=group_attrs,
        )

    import arviz as az

    return az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        warmup_posterior=warmup_posterior,
        warmup_sample_stats=warmup_sample_stats,
        observed_data=observed,
        constant_data=constants,
        coords=coords,
        dims=dims,
        posterior_attrs=attrs,
        sample_stats_attrs=attrs,
        save_warmup=save_warmup,
    )


def has_group(result, group: str) -> bool:
    if isinstance(result, xr.DataTree):
        return group in result.children
    return group in result.groups()


def group_dataset(result, group: str = "posterior") -> xr.Dataset:
    """One group of an InferenceData or DataTree as a plain ``xarray.Dataset``."""
    if isinstance(result, xr.DataTree):
        return result[group].to_dataset()
    return getattr(result, group)
