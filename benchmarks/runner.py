"""The command line: every (target, sampler) cell in one process, then the overhead check.

Cells run one after another on the same machine in the same process, each with a fresh
model and the same seed. A cell that fails (a sampler not installed, a model it cannot
compile, an exception while sampling) is reported with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from benchmarks import overhead as overhead_module
from benchmarks.metrics import cell_metrics, result_groups
from benchmarks.report import environment, failure_notes, format_table, write_results
from benchmarks.samplers import SAMPLERS, Sampler, Settings
from benchmarks.targets import TARGETS, default_targets, quick_targets

__all__ = ["main", "run_cell"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FULL_SETTINGS = dict(draws=2000, tune=1000, chains=4)
QUICK_SETTINGS = dict(draws=500, tune=500, chains=2)

NOTES = (
    "pm.sample (PyMC NUTS, JaxHMC) and nutpie get cores={cores}: on this {nproc}-CPU machine every sampler "
    "computes on one core (PyMC runs chains one after another, nutpie in one thread), while pns.sample runs all "
    "chains in one process, vmapped. CPU s / wall s shows the cores a cell actually used and the machine's load.",
    "PyMC's NUTS is requested with nuts_sampler='pymc' (PyMC 6 otherwise hands NUTS to nutpie when installed); "
    "otherwise default settings (target_accept 0.8, jitter+adapt_diag, max tree depth 10).",
    "wall s: around the whole call, compilation + warm-up + sampling (+ conversion to ArviZ); nutpie's includes "
    "compile_pymc_model, also shown alone as compile s. Libraries are imported and JAX initialised before the "
    "first timing; PyTensor's and numba's on-disk caches are in whatever state earlier runs left them.",
    "ESS: ArviZ rank-normalised bulk / tail, minimum over every scalar of the free variables and Deterministics. "
    "ESS/grad: min bulk ESS per true gradient evaluation in the draw phase (NUTS and nutpie: n_steps; ours: "
    "n_grad_evals), all chains. ESS/s: min bulk ESS per second of total wall time.",
    "accept: mean acceptance probability of the draws; div: divergent draws; max|z|: largest |z| of the posterior "
    "means and sds against the reference (pymc_neural_steps.testing.check_exactness), '!' at or above its "
    "threshold; R-hat: largest rank-normalised split R-hat.",
)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _names(value: str | None, known: dict, kind: str) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time step methods against PyMC's NUTS and nutpie on reference posteriors, in one run.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"few targets ({', '.join(quick_targets())}), "
                             f"{QUICK_SETTINGS['draws']} draws, {QUICK_SETTINGS['tune']} warm-up, {QUICK_SETTINGS['chains']} chains, "
                             "a short overhead check; about 1-2 minutes")
    parser.add_argument("--targets", help=f"comma-separated, from: {', '.join(TARGETS)}")
    parser.add_argument("--samplers", help=f"comma-separated, from: {', '.join(SAMPLERS)}")
    parser.add_argument("--draws", type=int, help=f"draws per chain (default {FULL_SETTINGS['draws']})")
    parser.add_argument("--tune", type=int, help=f"warm-up iterations per chain (default {FULL_SETTINGS['tune']})")
    parser.add_argument("--chains", type=int, help=f"chains (default {FULL_SETTINGS['chains']})")
    parser.add_argument("--cores", type=int, default=1, help="cores for pm.sample and nutpie (default 1)")
    parser.add_argument("--seed", type=int, default=20240601, help="random seed of every cell")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory for the JSON and Markdown results (default {DEFAULT_OUT})")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--skip-overhead", action="store_true", help="skip the pm.sample vs pns.sample per-draw cost check")
    parser.add_argument("--only-overhead", action="store_true", help="run only the per-draw cost check")
    parser.add_argument("--list", action="store_true", help="list targets and samplers and exit")
    return parser.parse_args(argv)


def _warm_process() -> None:
    """Pay import and backend start-up before the first timing, so no cell is charged for it."""
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    try:
        import nutpie  # noqa: F401  (imports numba)
    except ImportError:
        pass


def run_cell(target_name: str, reference, sampler: Sampler, settings: Settings) -> dict[str, Any]:
    """One (target, sampler) cell: sample, then measure. Never raises (except Ctrl-C)."""
    cell: dict[str, Any] = {"target": target_name, "sampler": sampler.name, "status": "ok"}
    try:
        missing = sampler.missing_requirements()
        if missing:
            raise ImportError(f"{', '.join(missing)} not installed")
        if isinstance(reference, BaseException):
            raise reference
        model = reference.build_model()
        var_names = [rv.name for rv in model.free_RVs] + [det.name for det in model.deterministics]
        with warnings.catch_warnings(record=True) as caught:
            run = sampler.run(model, settings)
        cell["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})
        cell.update(cell_metrics(
            result_groups(run.result),
            var_names=var_names,
            reference=reference,
            acceptance_stat=sampler.acceptance_stat,
            gradient_stat=sampler.gradient_stat,
            surrogate_stat=sampler.surrogate_stat,
            wall_time=run.wall_time,
            cpu_time=run.cpu_time,
            compile_time=run.compile_time,
        ))
    except Exception as error:  # noqa: BLE001 -- a failed cell is a result, not the end of the run
        cell["status"] = "failed"
        first_line = (str(error).strip().splitlines() or [""])[0]
        cell["error"] = f"{type(error).__name__}: {first_line[:300]}"
        cell["traceback"] = traceback.format_exc()
    return cell


def _load_reference(target_name: str):
    try:
        return TARGETS[target_name].reference()
    except Exception as error:  # noqa: BLE001 -- reported in every cell of the target
        return error


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        _say("targets:")
        for name, target in TARGETS.items():
            flags = ", ".join(f for f, on in (("quick", target.quick), ("default", target.default)) if on)
            _say(f"  {name:20s} {target.description} [{flags}]")
        _say("samplers:")
        for name, sampler in SAMPLERS.items():
            _say(f"  {name:20s} {sampler.description}")
        return 0

    logging.getLogger("pymc").setLevel(logging.ERROR)
    base = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    settings = Settings(
        draws=args.draws or base["draws"],
        tune=base["tune"] if args.tune is None else args.tune,
        chains=args.chains or base["chains"],
        seed=args.seed,
        cores=args.cores,
    )
    target_names = _names(args.targets, TARGETS, "targets") or (quick_targets() if args.quick else default_targets())
    sampler_names = _names(args.samplers, SAMPLERS, "samplers") or list(SAMPLERS)
    if args.only_overhead:
        target_names = []

    env = environment()
    _say(f"pymc-neural-steps benchmark — {env['date']}, {env['cpu_model']}, {env['nproc']} CPUs, "
         f"load {env['load_average_at_start'][0]:.2f}; Python {env['python']}, PyMC {env['packages']['pymc']}, "
         f"ArviZ {env['packages']['arviz']}, nutpie {env['packages']['nutpie']}")
    _say(f"{settings.draws} draws, {settings.tune} warm-up, {settings.chains} chains, cores={settings.cores}; "
         f"targets: {', '.join(target_names) or '-'}; samplers: {', '.join(sampler_names)}")
    _warm_process()

    cells: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    interrupted = False
    start = time.perf_counter()
    total = len(target_names) * len(sampler_names)
    try:
        for target_name in target_names:
            reference = _load_reference(target_name)
            sources[target_name] = getattr(reference, "source", f"failed to load: {reference!r}")
            for sampler_name in sampler_names:
                cell = run_cell(target_name, reference, SAMPLERS[sampler_name], settings)
                cells.append(cell)
                done = f"[{len(cells)}/{total}] {target_name} / {sampler_name}: "
                if cell["status"] == "ok":
                    _say(done + f"{cell['wall_time']:.1f} s, min ESS bulk {cell['ess_bulk']:.0f}, max|z| {cell['max_abs_z']:.2f}")
                else:
                    _say(done + f"FAILED, continuing — {cell['error']}")
    except KeyboardInterrupt:
        interrupted = True
        _say("interrupted: reporting the cells finished so far")

    overhead = overhead_text = None
    if not args.skip_overhead and not interrupted:
        _say("per-draw cost check: JaxHMC via pm.sample vs via pns.sample ...")
        try:
            overhead = overhead_module.measure_overhead(overhead_module.QUICK if args.quick else overhead_module.FULL, log=_say)
            overhead_text = overhead_module.format_overhead(overhead)
        except KeyboardInterrupt:
            interrupted = True
        except Exception as error:  # noqa: BLE001
            overhead = {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            overhead_text = f"per-draw cost check FAILED: {overhead['error']}"

    notes = [note.format(cores=settings.cores, nproc=env["nproc"]) for note in NOTES]
    if interrupted:
        notes.append("The run was interrupted; cells not listed were not run.")
    results = {
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "environment": env,
        "load_average_at_end": list(os.getloadavg()),
        "duration_s": time.perf_counter() - start,
        "settings": {**settings.__dict__, "quick": args.quick, "targets": target_names, "samplers": sampler_names},
        "target_sources": sources,
        "cells": cells,
        "overhead": overhead,
        "notes": notes,
        "interrupted": interrupted,
    }

    _say()
    if cells:
        _say(format_table(cells))
        for note in failure_notes(cells):
            _say(f"  note: {note}")
    if overhead_text:
        _say()
        _say(overhead_text)
    _say(f"\n({results['duration_s']:.0f} s in all; load average now {results['load_average_at_end'][0]:.2f})")
    if not args.no_write:
        json_path, md_path = write_results(results, args.out, overhead_text)
        _say(f"wrote {json_path} and {md_path}")
    return 130 if interrupted else 0
