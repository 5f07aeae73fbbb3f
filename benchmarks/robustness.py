"""The robustness suite: every method with its defaults on real posteriors nobody tuned for.

``python -m benchmarks --suite robustness --docs docs`` runs every target registered with
``suites=("robustness",)`` (the posteriordb posteriors of ``pymc_neural_steps.testing`` and
the German credit regression) with every sampler in ``SAMPLERS``, 4 chains x 1000 draws after
1000 warm-up iterations, and writes the table between the markers of ``docs/robustness.md``.

A cell passes when R-hat < ``MAX_RHAT``, every posterior mean and sd is within ``MAX_ABS_Z``
MCSE-based z of the reference, and the minimum bulk ESS is at least ``MIN_ESS`` wherever
PyMC's NUTS reaches ``MIN_ESS`` in the same run. A learned method whose gate chose HMC is
judged like any other cell: it passes if the HMC it fell back to does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import write_marked_section

__all__ = [
    "MAX_ABS_Z", "MAX_RHAT", "MIN_ESS", "SAMPLERS", "SETTINGS", "SUITE",
    "format_suite", "kernel_used", "pass_counts", "verdict", "write_section",
]

SUITE = "robustness"
SETTINGS = dict(draws=1000, tune=1000, chains=4)
SAMPLERS = (
    "pymc_nuts", "nutpie", "nutpie_lowrank",
    "jaxhmc", "nnghmc", "l2hmc", "entropyflow",
    "jaxhmc_pymc", "nnghmc_pymc", "l2hmc_pymc", "entropyflow_pymc",
)
BASELINES = ("pymc_nuts", "nutpie", "nutpie_lowrank")
NUTS = "pymc_nuts"
MAX_RHAT = 1.01
MAX_ABS_Z = 4.5
MIN_ESS = 400.0

BEGIN = "<!-- robustness-suite: begin (written by python -m benchmarks --suite robustness) -->"
END = "<!-- robustness-suite: end -->"


def kernel_used(cell: dict[str, Any]) -> str:
    """'learned', 'HMC' (the gate or the surrogate check fell back) or '' (no learned kernel)."""
    report = cell.get("training_report") or {}
    use = report.get("gate_use_learned", report.get("passed"))
    if use is None:
        return ""
    return "learned" if use else "HMC"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def verdict(cell: dict[str, Any], nuts_ess: float | None) -> tuple[bool | None, list[str]]:
    """(passed, reasons) of one cell; passed is None for a cell that did not run."""
    if cell.get("status") != "ok":
        return None, [cell.get("error", cell.get("status", "not run"))]
    reasons = []
    if not (_finite(cell.get("r_hat_max")) and cell["r_hat_max"] < MAX_RHAT):
        reasons.append(f"R-hat {_fmt(cell.get('r_hat_max'), '.3f') or 'n/a'}")
    if not (_finite(cell.get("max_abs_z")) and cell["max_abs_z"] <= MAX_ABS_Z):
        reasons.append(f"|z| {_fmt(cell.get('max_abs_z'), '.1f') or 'n/a'} ({cell.get('max_abs_z_param', '')})")
    if nuts_ess is not None and nuts_ess >= MIN_ESS and not cell.get("ess_bulk", 0.0) >= MIN_ESS:
        reasons.append(f"ESS {cell.get('ess_bulk', 0.0):.0f} < {MIN_ESS:.0f} (NUTS {nuts_ess:.0f})")
    return not reasons, reasons


def _nuts_ess(cells: Sequence[dict[str, Any]], target: str) -> float | None:
    for cell in cells:
        if cell["target"] == target and cell["sampler"] == NUTS and cell.get("status") == "ok":
            return float(cell["ess_bulk"])
    return None


def _best_baseline(cells: Sequence[dict[str, Any]], target: str, key: str) -> float | None:
    values = [c.get(key) for c in cells
              if c["target"] == target and c["sampler"] in BASELINES and c.get("status") == "ok"]
    values = [v for v in values if _finite(v)]
    return max(values) if values else None


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _finite(value) else ""


HEADER = ("posterior", "sampler", "pass", "R-hat", "min ESS bulk", "max abs z", "ESS/grad total",
          "ESS/s total", "vs best baseline", "kernel", "wall s", "why not")


def _row(cell: dict[str, Any], cells: Sequence[dict[str, Any]]) -> list[str]:
    passed, reasons = verdict(cell, _nuts_ess(cells, cell["target"]))
    best = _best_baseline(cells, cell["target"], "ess_per_second")
    ratio = cell.get("ess_per_second") / best if best and _finite(cell.get("ess_per_second")) else None
    return [
        cell["target"], cell["sampler"], {True: "yes", False: "**no**", None: "not run"}[passed],
        _fmt(cell.get("r_hat_max"), ".3f"), _fmt(cell.get("ess_bulk"), ".0f"), _fmt(cell.get("max_abs_z"), ".2f"),
        _fmt(cell.get("ess_per_grad_total"), ".3g"), _fmt(cell.get("ess_per_second"), ".3g"),
        _fmt(ratio, ".2f"), kernel_used(cell), _fmt(cell.get("wall_time"), ".0f"), "; ".join(reasons)[:160],
    ]


def pass_counts(cells: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """{sampler: (cells passed, cells run)}."""
    counts: dict[str, list[int]] = {}
    for cell in cells:
        passed, _ = verdict(cell, _nuts_ess(cells, cell["target"]))
        if passed is None:
            continue
        tally = counts.setdefault(cell["sampler"], [0, 0])
        tally[0] += bool(passed)
        tally[1] += 1
    return {sampler: (p, n) for sampler, (p, n) in counts.items()}


def format_suite(results: dict[str, Any]) -> str:
    """The suite's Markdown: how it was run, pass counts per sampler, one row per cell."""
    cells = results["cells"]
    env = results["environment"]
    lines = [
        f"Run `{results['command']}` on {env['date'][:10]}: {env['cpu_model']}, {env['nproc']} CPUs, "
        f"Python {env['python']}, PyMC {env['packages']['pymc']}, git {env.get('git')}; "
        f"{results['duration_s'] / 60:.0f} min in all. Every method with its defaults, "
        f"{SETTINGS['chains']} chains x {SETTINGS['draws']} draws after {SETTINGS['tune']} (unless the command says otherwise).",
        "",
        f"Pass: R-hat < {MAX_RHAT}, max |z| <= {MAX_ABS_Z} (means and sds against the Stan reference, MCSE-based), "
        f"min bulk ESS >= {MIN_ESS:.0f} where PyMC's NUTS reaches {MIN_ESS:.0f} in the same run. "
        "'kernel': what a learned method drew with after its gate (HMC = fell back). "
        "'vs best baseline': ESS per second of total wall time over the best of PyMC NUTS, nutpie and nutpie low-rank.",
        "",
        "| sampler | passed |",
        "| --- | --- |",
    ]
    lines += [f"| {sampler} | {p} / {n} |" for sampler, (p, n) in pass_counts(cells).items()]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(_row(cell, cells)) + " |" for cell in cells]
    return "\n".join(lines) + "\n"


def write_section(markdown: str, path: Path) -> Path:
    """Put ``markdown`` between the suite's markers in ``path`` (appended if there are none)."""
    return write_marked_section(markdown, path, BEGIN, END, "The robustness suite")
