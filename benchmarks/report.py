"""How a benchmark run is shown and stored: the machine it ran on, a text and a Markdown table, JSON.

Each run writes ``<stamp>-pymc<major>.json`` (every number, settings, machine, package
versions, failures with tracebacks) and ``<stamp>-pymc<major>.md`` (the same as tables, one
per target with where its reference posterior came from, a timing table, every failed or
skipped cell and why, the figures) into the output directory; ``write_docs`` writes the
same report as ``docs/benchmarks.md`` and ``docs/benchmarks.json``.
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

__all__ = [
    "environment", "failure_notes", "format_table", "run_stem", "write_docs", "write_marked_section",
    "write_results",
]

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
    ("ESS/step", "ess_per_step", ".3g"),
    ("ESS/grad", "ess_per_grad", ".3g"),
    ("ESS/grad total", "ess_per_grad_total", ".3g"),
    ("ESS/s sampling", "ess_per_second_sampling", ".3g"),
    ("ESS/s total", "ess_per_second", ".3g"),
    ("accept", "acceptance", ".2f"),
    ("div", "divergences", "d"),
    ("R-hat", "r_hat_max", ".3f"),
    ("max|z|", "max_abs_z", ".2f"),
    ("wall s", "wall_time", ".1f"),
)

# The timing table of the Markdown report.
TIME_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("wall s", "wall_time", ".1f"),
    ("sampling s", "sampling_time", ".1f"),
    ("training s", "training_time", ".1f"),
    ("compile s", "compile_time", ".1f"),
    ("CPU s", "cpu_time", ".1f"),
    ("grads/draw", "grad_evals_per_draw", ".3g"),
    ("draw grads", "grad_evals", ".3g"),
    ("warm-up grads", "grad_evals_warmup", ".3g"),
    ("training grads", "grad_evals_training", ".3g"),
    ("surrogate evals", "surrogate_evals", ".3g"),
)


def _marked(cell: dict[str, Any], key: str, text: str) -> str:
    if key == "max_abs_z":
        z = cell.get("max_abs_z")
        if z is not None and not (isinstance(z, float) and math.isnan(z)) and not (abs(z) < cell.get("z_threshold", math.inf)):
            return text + "!"
        if cell.get("exactness_passed") is None and text == "nan":
            return "n/a"  # no reference moments
    if key in ("ess_per_grad", "ess_tail_per_grad") and cell.get("grad_evals") == 0:
        return "∞"  # no true gradient in the draw phase (NNgHMC on its surrogate)
    if key == "ess_per_grad_total" and text and cell.get("ess_per_grad_total_complete") is False:
        return text + "*"
    if key == "sampling_time" and text and str(cell.get("sampling_time_source", "")).startswith("estimated"):
        return "~" + text
    return text


def _row(cell: dict[str, Any], columns=COLUMNS, *, with_target: bool = True) -> list[str]:
    lead = [cell["target"], cell["sampler"]] if with_target else [cell["sampler"]]
    if cell["status"] != "ok":
        return [*lead, cell["status"].upper(), *[""] * (len(columns) - 1)]
    return [*lead, *(_marked(cell, key, _number(cell.get(key), spec)) for _, key, spec in columns)]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    header = [h.replace("|", "\\|") for h in header]  # "max|z|" must not split a Markdown cell
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def format_table(cells: Sequence[dict[str, Any]], *, markdown: bool = False, columns=COLUMNS) -> str:
    """The per-(target, sampler) table; ``!`` marks a max |z| at or above the exactness
    threshold, ``*`` an ESS/grad total missing training gradients the sampler did not report."""
    header = ["target", "sampler", *(heading for heading, _, _ in columns)]
    rows = [_row(cell, columns) for cell in cells]
    if markdown:
        return "\n".join(_markdown_table(header, rows, 2))
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(row) for row in rows)])


def failure_notes(cells: Sequence[dict[str, Any]]) -> list[str]:
    """One line per reason a cell did not run or failed; identical reasons of a sampler are grouped."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for c in cells:
        if c["status"] != "ok":
            grouped.setdefault((c["sampler"], c["status"], c.get("error", "")), []).append(c["target"])
    lines = []
    for (sampler, status, error), targets in grouped.items():
        where = ", ".join(targets)
        lines.append(f"{where} / {sampler}: {status} — {error}")
    return lines


def _problem_notes(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Cells that ran but whose numbers need a caveat (failed exactness, lost artifacts, warnings)."""
    lines = []
    for c in cells:
        if c["status"] != "ok":
            continue
        name = f"{c['target']} / {c['sampler']}"
        z, threshold = c.get("max_abs_z"), c.get("z_threshold", math.inf)
        problems = c.get("exactness_problems") or []
        if z is not None and not (isinstance(z, float) and math.isnan(z)) and abs(z) >= threshold:
            lines.append(f"{name}: max|z| {z:.2f} at {c.get('max_abs_z_param', '')} (threshold {threshold:.1f}): "
                         "the posterior disagrees with the reference")
        elif c.get("exactness_passed") is False and problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            lines.append(f"{name}: exactness check not passed although |z| < {threshold:.1f}: {problems[0]}{more}")
        if c.get("ess_per_grad_total_complete") is False:
            lines.append(f"{name}: ESS/grad total incomplete ({c.get('training_grads_source', '')})")
        if c.get("artifact_error"):
            lines.append(f"{name}: artifacts not kept ({c['artifact_error']})")
        report = c.get("training_report") or {}
        if "accept_true" in report and "accept_surrogate" in report:
            true, surrogate = report["accept_true"], report["accept_surrogate"]
            if isinstance(true, float) and isinstance(surrogate, float):
                lines.append(f"{name}: last assessment, acceptance with the surrogate {surrogate:.2f} vs "
                             f"the true gradient {true:.2f} at the same step size (gap {true - surrogate:+.2f}); "
                             f"passed: {report.get('passed', 'n/a')}")
        per_second = c.get("ess_per_second_sampling")
        if per_second is None or (isinstance(per_second, float) and math.isnan(per_second)):
            lines.append(f"{name}: no draw-phase time, ESS/s sampling not available")
    return lines


def _target_sections(results: dict[str, Any]) -> list[str]:
    cells, settings = results["cells"], results["settings"]
    lines: list[str] = []
    header = ["sampler", *(heading for heading, _, _ in COLUMNS)]
    for target in dict.fromkeys(c["target"] for c in cells):
        length = settings.get("per_target", {}).get(target)
        description = results.get("targets", {}).get(target, "")
        lines += [f"### {target}", ""]
        if description:
            lines.append(f"{description}.  ")
        lines.append(f"Reference: {results['target_sources'].get(target, 'unknown')}.  ")
        if length:
            lines.append(f"Run: {length['chains']} chains x {length['draws']} draws after {length['tune']} warm-up iterations.")
        lines += [""]
        rows = [_row(c, with_target=False) for c in cells if c["target"] == target]
        lines += [*_markdown_table(header, rows, 1), ""]
    return lines


def _markdown(results: dict[str, Any], figure_prefix: str = "") -> str:
    env, settings = results["environment"], results["settings"]
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items() if version)
    ok = sum(c["status"] == "ok" for c in results["cells"])
    lines = [
        f"# pymc-neural-steps benchmark, {env['date']}",
        "",
        f"- Machine: {env['cpu_model']}, {env['nproc']} CPUs ({env['usable_cpus']} usable), {env['platform']}",
        f"- Load average at start / end: {', '.join(f'{x:.2f}' for x in env['load_average_at_start'])} / "
        f"{', '.join(f'{x:.2f}' for x in results.get('load_average_at_end', []))}",
        f"- Python {env['python']}; {packages}; repository {env['git']}",
        f"- Settings: per target below; cores={settings['cores']}, seed {settings['seed']}"
        f"{' (quick mode)' if settings.get('quick') else ''}",
        f"- Command: `{results['command']}`; {ok} of {len(results['cells'])} cells ran, "
        f"{results['duration_s'] / 60:.1f} min in all",
        "",
        "## ESS and cost per target",
        "",
        "Higher is better for every ESS column. `!` after max|z|: the exactness check failed; `n/a`: the target "
        "has no reference posterior. `*` after ESS/grad total: training gradients not reported (incomplete).",
        "",
        *_target_sections(results),
        "## Time and gradient counts",
        "",
        "`~` before sampling s: estimated (nutpie reports no timings; see the notes).",
        "",
        format_table(results["cells"], markdown=True, columns=TIME_COLUMNS),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in results["notes"]),
    ]
    failures = failure_notes(results["cells"])
    if failures:
        lines += ["", "## Cells that failed or were skipped", "", *(f"- {note}" for note in failures)]
    problems = _problem_notes(results["cells"])
    if problems:
        lines += ["", "## Caveats on cells that ran", "", *(f"- {note}" for note in problems)]
    figures = results.get("figures") or []
    if figures:
        lines += ["", "## Figures", ""]
        for figure in figures:
            if figure["status"] == "ok":
                lines += [f"**{figure['title']}.** {figure['caption']}", "", f"![{figure['title']}]({figure_prefix}{figure['file']})", ""]
            else:
                lines += [f"- {figure['name']}: not made — {figure.get('error', '')}", ""]
    lines += ["", "## Targets", "", *(f"- `{name}`: {source}" for name, source in results["target_sources"].items())]
    overhead_text = results.get("overhead_text")
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


def run_stem(out_dir: Path, env: dict[str, Any]) -> Path:
    """``<out_dir>/<UTC stamp>-pymc<major>``: the common stem of one run's files."""
    stamp = env["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    major = (env["packages"].get("pymc") or "0").split(".")[0]
    return Path(out_dir) / f"{stamp}-pymc{major}"


def _relative(target: Path, start: Path) -> str:
    prefix = os.path.relpath(Path(target).resolve(), Path(start).resolve())
    return "" if prefix == "." else prefix.replace(os.sep, "/") + "/"


def _write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_strict_json(results), indent=2, default=_json_default, allow_nan=False) + "\n")


def write_results(results: dict[str, Any], stem: Path, figure_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (figures linked from ``figure_dir``); returns their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    _write_json(results, json_path)
    prefix = _relative(figure_dir, stem.parent) if figure_dir is not None else ""
    md_path.write_text(_markdown(results, prefix))
    return json_path, md_path


def write_docs(results: dict[str, Any], docs_dir: Path) -> tuple[Path, Path]:
    """The same report as ``docs_dir/benchmarks.md`` and ``docs_dir/benchmarks.json`` (figures in ``docs_dir``)."""
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = docs_dir / "benchmarks.md", docs_dir / "benchmarks.json"
    _write_json(results, json_path)
    md_path.write_text(_markdown(results, ""))
    return md_path, json_path


def write_marked_section(markdown: str, path: Path, begin: str, end: str, heading: str) -> Path:
    """Put ``markdown`` between the markers ``begin`` and ``end`` of ``path``; without them,
    append it under ``heading``."""
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{markdown}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"## {heading}\n\n" + block + "\n"
    path.write_text(text)
    return path

