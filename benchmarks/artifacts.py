"""What a benchmark cell keeps besides its numbers, for the plots: traces, training curves, kernels.

Per (target, sampler) cell, ``<run>-artifacts/<target>__<sampler>.npz`` holds

* ``trace.<variable>``: the first scalar of every posterior variable, all chains (chain, draw);
* ``warmup.<stat>`` and ``draws.<stat>``: the per-iteration stats the training-curve plot
  reads (acceptance, step size, training loss and acceptance, β, ...), where the sampler
  has them, all chains (chain, iteration).

For targets with ``keep_trained`` (the banana), a learned step's trained kernel (its public
``trained`` attribute, e.g. ``TrainedNNgHMC``) is pickled beside it as
``<target>__<sampler>.trained.pkl``. Files are small (float32 traces, compressed).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from benchmarks.metrics import Groups

__all__ = ["CURVE_STATS", "load_cell", "load_trained", "save_cell"]

# Stats worth a curve over warm-up (whichever a sampler has).
CURVE_STATS = (
    "acceptance_rate", "mean_tree_accept", "step_size", "n_steps", "n_grad_evals",
    "training", "training_steps", "training_loss", "training_acceptance", "training_grad_evals",
    "training_time", "beta", "proposal_entropy", "surrogate_error", "esjd",
)


def _stem(directory: Path, target: str, sampler: str) -> Path:
    return Path(directory) / f"{target}__{sampler}"


def _first_scalar(array: xr.DataArray) -> np.ndarray:
    values = np.asarray(array.values)
    chains, draws = values.shape[:2]
    return values.reshape(chains, draws, -1)[..., 0]


def save_cell(directory: Path, target: str, sampler: str, groups: Groups, step: Any = None,
              keep_trained: bool = False) -> list[str]:
    """Write one cell's artifacts; returns the file names written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name, array in groups.posterior.data_vars.items():
        if array.ndim >= 2 and np.issubdtype(array.dtype, np.number):
            arrays[f"trace.{name}"] = _first_scalar(array).astype(np.float32)
    for label, stats in (("warmup", groups.warmup_sample_stats), ("draws", groups.sample_stats)):
        if stats is None:
            continue
        for name in CURVE_STATS:
            if name in stats and stats[name].ndim == 2:
                arrays[f"{label}.{name}"] = np.asarray(stats[name].values, dtype=np.float32)
    stem = _stem(directory, target, sampler)
    np.savez_compressed(stem.with_suffix(".npz"), **arrays)
    written = [stem.with_suffix(".npz").name]
    trained = getattr(step, "trained", None)
    if keep_trained and trained is not None:
        path = Path(f"{stem}.trained.pkl")
        with open(path, "wb") as f:
            pickle.dump(trained, f)
        written.append(path.name)
    return written


def load_cell(directory: Path, target: str, sampler: str) -> dict[str, np.ndarray] | None:
    """The arrays ``save_cell`` wrote, or None if there are none."""
    path = _stem(directory, target, sampler).with_suffix(".npz")
    if not path.exists():
        return None
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def load_trained(directory: Path, target: str, sampler: str) -> Any | None:
    """The pickled trained kernel of a cell (our own file, written by ``save_cell``), or None."""
    path = Path(f"{_stem(directory, target, sampler)}.trained.pkl")
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 -- a file this benchmark wrote itself
