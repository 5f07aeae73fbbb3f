"""Is a sampler exact? Compare its posterior means and sds with a reference, in MCSE units.

For every scalar parameter of a :class:`~pymc_neural_steps.testing.Reference`:

    z_mean = (mean_est - mean_ref) / sqrt(MCSE_mean_est² + MCSE_mean_ref²)
    z_sd   = (sd_est - sd_ref)     / sqrt(MCSE_sd_est² + MCSE_sd_ref² + sd_systematic²)

with ArviZ's MCSEs of the mean and of the sd on the sample (Vehtari et al. 2021). For an
exact sampler each z is approximately standard normal; a biased one produces |z| that grow
like the square root of the run length.

The check passes when every |z| is below ``threshold`` AND the run is long and mixed enough
for the MCSEs to be trusted (bulk and tail ESS ≥ ``min_ess``, R-hat ≤ ``max_rhat`` for every
checked parameter) AND every referenced parameter is present and finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pymc_neural_steps.testing import _posterior
from pymc_neural_steps.testing.references import Reference, scalar_key, split_key

__all__ = ["DEFAULT_MAX_RHAT", "DEFAULT_MIN_ESS", "DEFAULT_THRESHOLD", "ExactnessReport", "ZScore", "check_exactness"]

DEFAULT_THRESHOLD = 4.0
DEFAULT_MIN_ESS = 100.0
DEFAULT_MAX_RHAT = 1.01


@dataclass(frozen=True)
class ZScore:
    """One row of the report: one statistic ("mean" or "sd") of one scalar parameter."""

    key: str
    statistic: str
    estimate: float
    reference: float
    mcse: float
    reference_error: float
    z: float
    ess_bulk: float
    ess_tail: float
    r_hat: float


_COLUMNS = ("parameter", "stat", "estimate", "reference", "mcse", "ref error", "z", "ess_bulk", "ess_tail", "r_hat")


def _format_row(row: ZScore) -> tuple[str, ...]:
    return (
        row.key,
        row.statistic,
        f"{row.estimate:.5g}",
        f"{row.reference:.5g}",
        f"{row.mcse:.3g}",
        f"{row.reference_error:.3g}",
        f"{row.z:+.2f}",
        f"{row.ess_bulk:.0f}",
        f"{row.ess_tail:.0f}",
        f"{row.r_hat:.3f}",
    )


@dataclass(frozen=True)
class ExactnessReport:
    """The outcome of :func:`check_exactness`.

    ``rows`` holds one :class:`ZScore` per (parameter, statistic), in reference order;
    ``problems`` lists every reason the check fails, in words (empty when it passes).
    """

    reference: str
    rows: tuple[ZScore, ...]
    problems: tuple[str, ...]
    threshold: float
    min_ess: float
    max_rhat: float
    chains: int
    draws: int

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def max_abs_z(self) -> float:
        return max((abs(row.z) for row in self.rows), default=0.0)

    @property
    def min_ess_bulk(self) -> float:
        return min((row.ess_bulk for row in self.rows), default=math.nan)

    @property
    def max_r_hat(self) -> float:
        return max((row.r_hat for row in self.rows), default=math.nan)

    def worst(self, n: int | None = None) -> list[ZScore]:
        """Rows by decreasing |z| (non-finite first)."""
        ranked = sorted(self.rows, key=lambda row: -abs(row.z) if np.isfinite(row.z) else -math.inf)
        return ranked if n is None else ranked[:n]

    def table(self, rows: Sequence[ZScore] | None = None) -> str:
        """A plain-text table of ``rows`` (default: all, in reference order)."""
        cells = [_COLUMNS, *(_format_row(row) for row in (self.rows if rows is None else rows))]
        widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
        return "\n".join(
            "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in cells
        )

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"exactness vs {self.reference!r}: {verdict} — {len(self.rows)} z-scores from {self.chains} chains × "
            f"{self.draws} draws, max |z| = {self.max_abs_z:.2f} (threshold {self.threshold}), "
            f"min bulk ESS = {self.min_ess_bulk:.0f} (need {self.min_ess:.0f}), "
            f"max R-hat = {self.max_r_hat:.3f} (limit {self.max_rhat})"
        )

    def _problem_lines(self, limit: int = 12) -> list[str]:
        lines = [f"  - {problem}" for problem in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  - … and {len(self.problems) - limit} more")
        return lines

    def __str__(self) -> str:
        return "\n".join([self.summary(), *self._problem_lines(), self.table(self.worst(10))])

    def assert_passed(self, n_worst: int = 10) -> None:
        """Raise ``AssertionError`` listing the problems and the ``n_worst`` rows by |z|."""
        if not self.passed:
            lines = [self.summary(), *self._problem_lines(), "worst rows:", self.table(self.worst(n_worst))]
            raise AssertionError("\n".join(lines))


def _scalar_statistics(sample: xr.Dataset) -> dict[str, dict[str, float]]:
    """``{key: {statistic: value}}`` for every scalar element of every variable in ``sample``."""
    with np.errstate(divide="ignore", invalid="ignore"):  # constant draws: reported later as non-finite
        per_variable = {
            "mean": sample.mean(_posterior.SAMPLE_DIMS),
            "sd": sample.std(_posterior.SAMPLE_DIMS, ddof=1),
            "mcse_mean": _posterior.mcse_mean(sample),
            "mcse_sd": _posterior.mcse_sd(sample),
            "ess_bulk": _posterior.ess(sample, "bulk"),
            "ess_tail": _posterior.ess(sample, "tail"),
            "r_hat": _posterior.rhat(sample),
        }
    table: dict[str, dict[str, float]] = {}
    for name in sample.data_vars:
        for statistic, ds in per_variable.items():
            values = np.asarray(ds[name].values, dtype=float)
            for index in np.ndindex(values.shape):
                table.setdefault(scalar_key(str(name), index), {})[statistic] = float(values[index])
    return table


def _z(difference: float, *errors: float) -> float:
    scale = math.sqrt(sum(e * e for e in errors))
    if scale > 0:
        return difference / scale
    return 0.0 if difference == 0 else math.copysign(math.inf, difference)


def _row_problems(rows, *, threshold: float, min_ess: float, max_rhat: float) -> list[str]:
    """What fails in the z-score rows: unusable diagnostics, low ESS, R-hat, large |z|."""
    problems = []
    for row in rows:
        if row.statistic != "mean":
            continue
        values = (row.estimate, row.mcse, row.ess_bulk, row.ess_tail, row.r_hat)
        if not all(np.isfinite(values)):
            problems.append(f"{row.key}: non-finite estimate or diagnostic (draws contain NaN/inf, or are constant)")
        elif min(row.ess_bulk, row.ess_tail) < min_ess:
            problems.append(
                f"{row.key}: ESS bulk {row.ess_bulk:.0f} / tail {row.ess_tail:.0f} < {min_ess:.0f}, MCSE unreliable"
            )
        if np.isfinite(row.r_hat) and row.r_hat > max_rhat:
            problems.append(f"{row.key}: R-hat {row.r_hat:.3f} > {max_rhat}")
    for row in rows:
        if not abs(row.z) < threshold:
            problems.append(f"{row.key} {row.statistic}: |z| = {abs(row.z):.2f} ≥ {threshold}")
    return problems


def check_exactness(
    result: object,
    reference: Reference,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    var_names: Sequence[str] | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
    max_rhat: float = DEFAULT_MAX_RHAT,
) -> ExactnessReport:
    """Compare a sample's posterior means and sds with ``reference`` in units of their MCSE.

    Parameters
    ----------
    result
        What ``pm.sample`` returned: ``arviz.InferenceData`` (PyMC 5) or ``xarray.DataTree``
        (PyMC 6), or a posterior ``xarray.Dataset`` with ``chain`` and ``draw`` dimensions.
    reference
        The target's :class:`~pymc_neural_steps.testing.Reference`.
    threshold
        Largest |z| accepted. The default, 4.0, is a family-wise test: for an exact sampler
        each z is close to N(0, 1), so P(|z| > 4) ≈ 6e-5 per z-score and ≈ 6e-3 for a check of
        100 z-scores (50 parameters, mean and sd), leaving room for the heavier-than-normal
        tails that come from estimating the MCSEs themselves. 3 would raise false alarms in
        roughly one check in four at that size. The price is power: a bias is caught
        reliably once it exceeds about 4–5 combined MCSEs, i.e. a relative bias in the mean
        of ≈ 4/√ESS sds, and in the sd of ≈ 4·sqrt((κ-1)/4)/√ESS (κ the kurtosis; 2.8/√ESS
        for a Gaussian). With ESS = 2000: a mean off by 0.09 sd or an sd off by 6 %. Longer
        runs detect smaller biases; the threshold need not change.
    var_names
        Restrict the check to these variables (default: every variable with a reference).
    min_ess
        Minimum bulk and tail ESS of every checked parameter. Below ~100 the ESS, hence the
        MCSE, is itself too noisy to normalise by (Vehtari et al. 2021 recommend 100 per
        chain for reliable R-hat and 400 in total); and chains stuck in different places
        show up here as low ESS while their MCSE would be inflated enough to hide any bias.
    max_rhat
        Largest rank-normalised split R-hat accepted (Vehtari et al. 2021 recommend 1.01).
        It is a sanity bound on mixing; the z-scores carry the test. With only a few
        hundred effective draws in total an exact sampler can exceed 1.01 on one of many
        parameters by chance; run longer rather than loosen it.

    Returns
    -------
    ExactnessReport
        ``report.passed``, ``report.max_abs_z``, ``report.rows``; ``report.assert_passed()``
        raises with a table of the worst rows.
    """
    posterior = _posterior.posterior_dataset(result)
    wanted = reference.var_names if var_names is None else tuple(var_names)
    unknown = [name for name in wanted if name not in reference.var_names]
    if unknown:
        raise ValueError(f"no reference for {unknown}; reference {reference.name!r} has {list(reference.var_names)}")

    problems: list[str] = []
    missing = [name for name in wanted if name not in posterior.data_vars]
    if missing:
        problems.append(f"variables {missing} are not in the posterior")
    present = [name for name in wanted if name in posterior.data_vars]
    estimates = _scalar_statistics(posterior[present]) if present else {}

    rows: list[ZScore] = []
    for key, ref in reference.moments.items():
        if split_key(key)[0] not in present:
            continue
        if key not in estimates:
            problems.append(f"{key} is not in the posterior (shape mismatch)")
            continue
        est = estimates[key]
        diagnostics = {"ess_bulk": est["ess_bulk"], "ess_tail": est["ess_tail"], "r_hat": est["r_hat"]}
        z_mean = _z(est["mean"] - ref.mean, est["mcse_mean"], ref.mean_mcse)
        rows.append(ZScore(key, "mean", est["mean"], ref.mean, est["mcse_mean"], ref.mean_mcse, z_mean, **diagnostics))
        if ref.check_sd:
            sd_error = math.hypot(ref.sd_mcse, ref.sd_systematic)
            z_sd = _z(est["sd"] - ref.sd, est["mcse_sd"], sd_error)
            rows.append(ZScore(key, "sd", est["sd"], ref.sd, est["mcse_sd"], sd_error, z_sd, **diagnostics))

    problems += _row_problems(rows, threshold=threshold, min_ess=min_ess, max_rhat=max_rhat)

    return ExactnessReport(
        reference=reference.name,
        rows=tuple(rows),
        problems=tuple(problems),
        threshold=float(threshold),
        min_ess=float(min_ess),
        max_rhat=float(max_rhat),
        chains=int(posterior.sizes["chain"]),
        draws=int(posterior.sizes["draw"]),
    )
