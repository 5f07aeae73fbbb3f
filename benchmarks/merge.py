"""Merge benchmark runs into one report: ``python -m benchmarks.merge FIRST.json LATER.json ... --docs docs``.

The full run stops starting cells when its time budget is spent; the cells it skipped for
that reason can be run by a second command (``--targets ...``) and merged here. A cell of a
later run replaces the first run's cell for the same (target, sampler) when that one did
not run (skipped or failed), and is added when the first run has none. Every merged run's
command, date and load average goes into the notes, so the report says which cells came
from which run. Figures are redrawn from the merged cells and the first run's artifacts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.report import write_docs
from benchmarks.runner import _make_figures

__all__ = ["merge"]


def merge(first: dict[str, Any], *later: dict[str, Any]) -> dict[str, Any]:
    """``first`` with the cells of ``later`` runs merged in (see the module docstring)."""
    merged = json.loads(json.dumps(first))
    index = {(c["target"], c["sampler"]): i for i, c in enumerate(merged["cells"])}
    for run in later:
        taken = []
        for cell in run["cells"]:
            key = (cell["target"], cell["sampler"])
            if key not in index:
                index[key] = len(merged["cells"])
                merged["cells"].append(cell)
            elif merged["cells"][index[key]]["status"] != "ok" and cell["status"] == "ok":
                merged["cells"][index[key]] = cell
            else:
                continue
            taken.append(f"{key[0]} / {key[1]}")
        for name, settings in run["settings"].get("per_target", {}).items():
            merged["settings"]["per_target"].setdefault(name, settings)
        merged["targets"].update({k: v for k, v in run.get("targets", {}).items() if k not in merged["targets"]})
        merged["target_sources"].update(
            {k: v for k, v in run.get("target_sources", {}).items() if k not in merged["target_sources"]}
        )
        merged["duration_s"] += run["duration_s"]
        load = ", ".join(f"{x:.2f}" for x in run["environment"]["load_average_at_start"])
        merged["notes"].append(
            f"Cells from a second run ({run['environment']['date']}, load average at start {load}, "
            f"`{run['command']}`): {', '.join(taken) if taken else 'none'}."
        )
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results JSON files, the main run first")
    parser.add_argument("--docs", type=Path, required=True, help="write DIR/benchmarks.{md,json} and the figures")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    merged = merge(*runs)
    artifacts = runs[0].get("artifacts_dir")
    if artifacts:
        merged["figures"] = _make_figures(merged, args.runs[0].parent / artifacts, args.docs)
    for path in write_docs(merged, args.docs):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
