"""Checks of user settings and loaded arrays, each failing with an error that names the value.

A sampler given a step size of 0, a negative inverse mass or a NaN weight does not fail: its
chains stand still or every proposal is rejected, and the stats can even look healthy
(acceptance 1.0 at step size 0). Every setting and every array read from disk therefore
passes through one of these functions before it reaches a kernel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "InvalidSettingError",
    "check_count",
    "check_finite_arrays",
    "check_fraction",
    "check_inverse_mass",
    "check_nonnegative",
    "check_positive",
    "check_step_size",
]

# A leapfrog step larger than this, in the whitened units every kernel works in, crosses
# many posterior standard deviations at once: it cannot be accepted by any target, so a
# value above it is a typo or a corrupted file, not a setting.
MAX_STEP_SIZE = 1e3


class InvalidSettingError(ValueError):
    """A setting or a loaded array that no sampler can run with."""


def check_positive(name: str, value: Any, *, maximum: float | None = None) -> float:
    """``value`` as a float, refused unless finite, > 0 (and <= ``maximum`` if given)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidSettingError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0.0:
        raise InvalidSettingError(f"{name} must be a finite positive number, got {value!r}")
    if maximum is not None and x > maximum:
        raise InvalidSettingError(f"{name} = {x:g} is larger than the largest usable {maximum:g}")
    return x


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a float, refused unless finite and >= 0."""
    x = float(value)
    if not math.isfinite(x) or x < 0.0:
        raise InvalidSettingError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def check_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """A whole number >= ``minimum`` (a count of steps, walkers, units, ...)."""
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise InvalidSettingError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_step_size(value: Any, *, name: str = "step_size") -> float | None:
    """A leapfrog step size: None (adapt from the default) or finite in (0, MAX_STEP_SIZE]."""
    if value is None:
        return None
    return check_positive(name, value, maximum=MAX_STEP_SIZE)


def check_fraction(name: str, value: Any, *, closed_low: bool = False) -> float:
    """A number in the open interval (0, 1) (or [0, 1) with ``closed_low``)."""
    x = float(value)
    low_ok = x >= 0.0 if closed_low else x > 0.0
    if not (math.isfinite(x) and low_ok and x < 1.0):
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise InvalidSettingError(f"{name} must lie in {interval}, got {value!r}")
    return x


def check_inverse_mass(value: Any, dim: int, *, name: str = "inverse_mass") -> np.ndarray:
    """A diagonal (d,) inverse mass with finite positive entries, or a dense (d, d) one
    that is symmetric positive definite."""
    a = np.asarray(value, dtype=np.float64)
    if a.shape not in ((dim,), (dim, dim)):
        raise InvalidSettingError(f"{name} has shape {a.shape}; expected ({dim},) or ({dim}, {dim})")
    if not np.all(np.isfinite(a)):
        raise InvalidSettingError(f"{name} has non-finite entries")
    if a.ndim == 1:
        if np.any(a <= 0.0):
            bad = int(np.argmin(a))
            raise InvalidSettingError(
                f"{name} must be positive; entry {bad} is {a[bad]:g}"
            )
        return a
    if not np.allclose(a, a.T, rtol=1e-10, atol=0.0):
        raise InvalidSettingError(f"{name} is not symmetric")
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise InvalidSettingError(f"{name} is not positive definite") from None
    return a


def check_finite_arrays(tree: Any, *, what: str) -> None:
    """Refuse a pytree (e.g. network weights read from disk) holding a NaN or infinity,
    naming the first offending leaf."""
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in flat:
        a = np.asarray(leaf)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise InvalidSettingError(
                f"{what}: array {jax.tree_util.keystr(path)} holds non-finite values"
            )
