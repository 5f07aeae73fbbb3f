"""How a benchmark run is shown and stored: the machine it ran on, a text and a Markdown table, JSON.

Each run writes ``<stamp>-pymc<major>.json`` (every number, settings, machine, package
versions, failures with tracebacks) and ``<stamp>-pymc<major>.md`` (the same as tables) into
the output directory.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["environment", "format_table", "write_results"]

PACKAGES = (
    "pymc-neural-steps", "pymc", "pytensor", "arviz", "arviz-base", "arviz-stats", "xarray",
    "numpy", "jax", "jaxlib", "optax", "equinox", "nutpie", "numba",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+uncommitted changes" if dirty else "")


def environment() -> dict[str, Any]:
    """Date, machine, load and package versions, for the header of every result file."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_model": _cpu_model(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "git": _git_revision(),
    }


def _number(value: Any, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if spec == ".3g" and abs(value) >= 1000:
        return f"{value:.0f}"  # 1234, not 1.23e+03
    return format(value, spec)


# (heading, cell key, format) of every table column after target and sampler.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ESS bulk", "ess_bulk", ".0f"),
    ("ESS tail", "ess_tail", ".0f"),
    ("ESS/grad", "ess_per_grad", ".3g"),
    ("ESS/s", "ess_per_second", ".3g"),
    ("wall s", "wall_time", ".1f"),
    ("CPU s", "cpu_time", ".1f"),
    ("compile s", "compile_time", ".1f"),
    ("accept", "acceptance", ".2f"),
    ("div", "divergences", "d"),
    ("max|z|", "max_abs_z", ".2f"),
    ("R-hat", "r_hat_max", ".3f"),
)


def _row(cell: dict[str, Any]) -> list[str]:
    if cell["status"] != "ok":
        return [cell["target"], cell["sampler"], cell["status"].upper(), *[""] * (len(COLUMNS) - 1)]
    values = [_number(cell.get(key), spec) for _, key, spec in COLUMNS]
    z_index = [key for _, key, _ in COLUMNS].index("max_abs_z")
    z = cell.get("max_abs_z")
    if z is not None and not (abs(z) < cell.get("z_threshold", math.inf)):
        values[z_index] += "!"
    return [cell["target"], cell["sampler"], *values]


def format_table(cells: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """The per-(target, sampler) table; ``!`` marks a max |z| at or above the exactness threshold."""
    header = ["target", "sampler", *(heading for heading, _, _ in COLUMNS)]
    rows = [_row(cell) for cell in cells]
    if markdown:
        header = [h.replace("|", "\\|") for h in header]  # "max|z|" must not split a Markdown cell
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(COLUMNS)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(row) for row in rows)])


def failure_notes(cells: Sequence[dict[str, Any]]) -> list[str]:
    return [f"{c['target']} / {c['sampler']}: {c['error']}" for c in cells if c["status"] != "ok"]


def _markdown(results: dict[str, Any], overhead_text: str | None) -> str:
    env, settings = results["environment"], results["settings"]
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items() if version)
    lines = [
        f"# pymc-neural-steps benchmark, {env['date']}",
        "",
        f"- Machine: {env['cpu_model']}, {env['nproc']} CPUs ({env['usable_cpus']} usable), {env['platform']}",
        f"- Load average at start / end: {', '.join(f'{x:.2f}' for x in env['load_average_at_start'])} / "
        f"{', '.join(f'{x:.2f}' for x in results.get('load_average_at_end', []))}",
        f"- Python {env['python']}; {packages}; repository {env['git']}",
        f"- Settings: {settings['draws']} draws, {settings['tune']} warm-up, {settings['chains']} chains, "
        f"cores={settings['cores']}, seed {settings['seed']}{' (quick mode)' if settings['quick'] else ''}",
        f"- Command: `{results['command']}`",
        "",
        "## ESS and cost per (target, sampler)",
        "",
        format_table(results["cells"], markdown=True),
        "",
        *(f"- {note}" for note in results["notes"]),
    ]
    failures = failure_notes(results["cells"])
    if failures:
        lines += ["", "## Cells that failed", "", *(f"- {note}" for note in failures)]
    lines += ["", "## Targets", "", *(f"- `{name}`: {source}" for name, source in results["target_sources"].items())]
    if overhead_text:
        lines += ["", "## Driver overhead", "", "```", overhead_text, "```"]
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _strict_json(value: Any) -> Any:
    """NaN and infinities become null: the file stays valid JSON for every reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def write_results(results: dict[str, Any], out_dir: Path, overhead_text: str | None) -> tuple[Path, Path]:
    """Write the JSON and Markdown files of one run; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["environment"]["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    major = (results["environment"]["packages"].get("pymc") or "0").split(".")[0]
    stem = out_dir / f"{stamp}-pymc{major}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(_strict_json(results), indent=2, default=_json_default, allow_nan=False) + "\n")
    md_path.write_text(_markdown(results, overhead_text))
    return json_path, md_path
