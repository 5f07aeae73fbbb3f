"""The command line: every (target, sampler) cell in one process, then the overhead check.

Cells run one after another on the same machine in the same process, each with a fresh
model and the same seed. A cell that fails (a sampler not installed, a model it cannot
compile, an exception while sampling) is reported with its error and the run goes on; a
cell a target excludes (``BenchTarget.skip``), or one that would start after the run's time
budget is spent (``--budget-minutes``), is reported as skipped with the reason.

Outputs: ``<out>/<stamp>-pymc<major>.json`` and ``.md``, the cells' artifacts in
``<out>/<stamp>-pymc<major>-artifacts/`` and the figures (``plots.py``) in
``<out>/<stamp>-pymc<major>-plots/``; with ``--docs DIR`` the figures go to DIR instead and
the report is also written as ``DIR/benchmarks.md`` and ``DIR/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import jax

from benchmarks import artifacts, robustness
from benchmarks import overhead as overhead_module
from benchmarks.metrics import cell_metrics, result_groups
from benchmarks.report import environment, failure_notes, format_table, run_stem, write_docs, write_results
from benchmarks.samplers import SAMPLERS, Sampler, Settings, default_samplers
from benchmarks.targets import TARGETS, BenchTarget, default_targets, quick_targets, suite_targets

__all__ = ["main", "run_cell"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FULL_SETTINGS = dict(draws=2000, tune=1000, chains=4)
QUICK_SETTINGS = dict(draws=500, tune=500, chains=2)
# Minutes after which no further cell starts (the rest are reported as skipped). The issue
# asks for the full suite in under 45 minutes and the quick one in under 5; what follows the
# last cell (the cell itself, up to a few minutes; the full run's overhead check, ~3 minutes;
# the figures, ~0.5) must fit in the rest.
FULL_BUDGET_MINUTES = 36.0
QUICK_BUDGET_MINUTES = 3.5

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
    "n_grad_evals), all chains; 'ESS/grad total' adds warm-up and training gradients (see the training-gradient "
    "note). ESS/step: min bulk ESS per draw (one MH test or NUTS transition each). ESS/s: min bulk ESS per second "
    "of the draw phase ('sampling') and of the whole call ('total': compilation, warm-up, training, sampling).",
    "Draw-phase time: pns.sample's own sampling_time (its draw chunks, their compilation included); pm.sample: a "
    "callback's stamps from each chain's last warm-up iteration to its last draw; nutpie reports no timings, so "
    "its draw-phase time is an estimate: sampling wall time x the draw phase's share of its gradient evaluations.",
    "Training gradients: L2HMC and EntropyFlowMC report their training ensemble's forward gradients as "
    "training_grad_evals (added to the total); NNgHMC trains on pairs recorded along its warm-up trajectories, "
    "already counted in its warm-up n_grad_evals (its assessment gradients too). A total marked '*' is incomplete: "
    "the sampler trains but reports no training gradients.",
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
                             "no overhead check (--overhead adds it); under 5 minutes")
    parser.add_argument("--suite", choices=(robustness.SUITE,),
                        help="run a named suite: its targets, samplers and run length (robustness: every method with "
                             f"its defaults on real posteriors, {robustness.SETTINGS['chains']}x{robustness.SETTINGS['draws']} "
                             f"after {robustness.SETTINGS['tune']}; with --docs writes DIR/robustness.md's table)")
    parser.add_argument("--targets", help=f"comma-separated, from: {', '.join(TARGETS)}")
    parser.add_argument("--samplers", help=f"comma-separated, from: {', '.join(SAMPLERS)}")
    parser.add_argument("--draws", type=int, help=f"draws per chain, every target (default {FULL_SETTINGS['draws']} or the target's own)")
    parser.add_argument("--tune", type=int, help=f"warm-up iterations per chain, every target (default {FULL_SETTINGS['tune']} or the target's own)")
    parser.add_argument("--chains", type=int, help=f"chains, every target (default {FULL_SETTINGS['chains']} or the target's own)")
    parser.add_argument("--cores", type=int, default=1, help="cores for pm.sample and nutpie (default 1)")
    parser.add_argument("--seed", type=int, default=20240601, help="random seed of every cell")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory for the JSON and Markdown results (default {DEFAULT_OUT})")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--docs", type=Path, help="also write DIR/benchmarks.md and DIR/benchmarks.json, and put the figures in DIR")
    parser.add_argument("--no-plots", action="store_true", help="make no figures")
    parser.add_argument("--budget-minutes", type=float,
                        help=f"start no cell after this many minutes (default {FULL_BUDGET_MINUTES:g} for the full run, "
                             f"{QUICK_BUDGET_MINUTES:g} with --quick, none when targets or samplers are named; 0: none)")
    parser.add_argument("--overhead", action="store_true",
                        help="run the per-draw cost check also with --quick or named targets/samplers")
    parser.add_argument("--run-skipped", action="store_true",
                        help="also run the cells a target skips (e.g. nutpie's flow adaptation off its headline targets)")
    parser.add_argument("--skip-overhead", action="store_true", help="skip the pm.sample vs pns.sample per-draw cost check")
    parser.add_argument("--only-overhead", action="store_true", help="run only the per-draw cost check")
    parser.add_argument("--list", action="store_true", help="list targets and samplers and exit")
    return parser.parse_args(argv)


def _training_report(step) -> dict[str, Any] | None:
    """What a learned step says about its training (``trained.report``: for NNgHMC the
    acceptance of the surrogate and of the true gradient at the same step size)."""
    trained = getattr(step, "trained", None)
    report = getattr(trained, "report", None)
    if not isinstance(report, dict):
        return None
    kept = {k: v for k, v in report.items() if isinstance(v, bool | int | float | str) or v is None}
    if isinstance(getattr(trained, "passed", None), bool):
        kept["passed"] = trained.passed
    return kept


def _release_compiled() -> None:
    """Drop the cell's compiled JAX programs. Every XLA executable keeps memory mappings,
    and a full run compiles thousands (nutpie's flow adaptation alone, hundreds per cell):
    kept, they reach the kernel's per-process mapping limit (65,530 here) and LLVM then
    fails with "Cannot allocate memory" in whichever cell comes next."""
    gc.collect()
    jax.clear_caches()
    gc.collect()


def _warm_process() -> None:
    """Pay import and backend start-up before the first timing, so no cell is charged for it."""
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    try:
        import nutpie  # noqa: F401  (imports numba)
    except ImportError:
        pass


def run_cell(
    target_name: str,
    reference,
    sampler: Sampler,
    settings: Settings,
    *,
    artifacts_dir: Path | None = None,
    keep_trained: bool = False,
) -> dict[str, Any]:
    """One (target, sampler) cell: sample, then measure. Never raises (except Ctrl-C).

    With ``artifacts_dir`` the cell's traces and training curves (and, with
    ``keep_trained``, the trained kernel) are kept for the plots (``artifacts.py``).
    """
    cell: dict[str, Any] = {
        "target": target_name, "sampler": sampler.name, "status": "ok",
        "settings": {"draws": settings.draws, "tune": settings.tune, "chains": settings.chains},
    }
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
        groups = result_groups(run.result)
        cell.update(cell_metrics(
            groups,
            var_names=var_names,
            reference=reference,
            acceptance_stat=sampler.acceptance_stat,
            gradient_stat=sampler.gradient_stat,
            surrogate_stat=sampler.surrogate_stat,
            wall_time=run.wall_time,
            cpu_time=run.cpu_time,
            compile_time=run.compile_time,
            sampling_time=run.sampling_time,
        ))
        cell["sampling_time_source"] = run.sampling_time_source
        cell["training_report"] = _training_report(run.step)
        if artifacts_dir is not None:
            try:
                cell["artifacts"] = artifacts.save_cell(artifacts_dir, target_name, sampler.name, groups,
                                                        run.step, keep_trained=keep_trained)
            except Exception as error:  # noqa: BLE001 -- the numbers stand without the pictures
                cell["artifact_error"] = f"{type(error).__name__}: {error}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 -- a failed cell is a result, not the end of
        # the run; BaseException too: a Rust panic inside nutpie arrives as pyo3's
        # PanicException, which derives from BaseException.
        cell["status"] = "failed"
        first_line = (str(error).strip().splitlines() or [""])[0]
        cell["error"] = f"{type(error).__name__}: {first_line[:300]}"
        cell["traceback"] = traceback.format_exc()
    return cell


def skipped_cell(target_name: str, sampler_name: str, reason: str) -> dict[str, Any]:
    return {"target": target_name, "sampler": sampler_name, "status": "skipped", "error": reason}


def target_settings(target: BenchTarget, args: argparse.Namespace) -> Settings:
    """The run length of one target: quick or full defaults, the target's own, the command line's."""
    if args.quick:
        base = dict(QUICK_SETTINGS)
    elif args.suite:
        base = dict(robustness.SETTINGS)
    else:
        base = {key: getattr(target, key) or value for key, value in FULL_SETTINGS.items()}
    return Settings(
        draws=args.draws or base["draws"],
        tune=base["tune"] if args.tune is None else args.tune,
        chains=args.chains or base["chains"],
        seed=args.seed,
        cores=args.cores,
    )


def _budget_seconds(args: argparse.Namespace) -> float | None:
    minutes = args.budget_minutes
    if minutes is None:
        if args.targets or args.samplers or args.suite:
            return None
        minutes = QUICK_BUDGET_MINUTES if args.quick else FULL_BUDGET_MINUTES
    return 60.0 * minutes if minutes > 0 else None


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
            flags = ", ".join([f for f, on in (("quick", target.quick), ("default", target.default)) if on]
                              + [f"suite {suite}" for suite in target.suites])
            length = "/".join(str(getattr(target, k) or FULL_SETTINGS[k]) for k in ("chains", "draws", "tune"))
            _say(f"  {name:22s} {target.description} [{flags}; chains/draws/tune {length}]")
            for pattern, reason in target.skip:
                _say(f"  {'':22s}   skips {pattern}: {reason}")
        _say("samplers:")
        for name, sampler in SAMPLERS.items():
            _say(f"  {name:22s} {sampler.description}{'' if sampler.default else ' [run when named]'}")
        return 0

    logging.getLogger("pymc").setLevel(logging.ERROR)
    target_names = _names(args.targets, TARGETS, "targets") or (
        suite_targets(args.suite) if args.suite else quick_targets() if args.quick else default_targets())
    sampler_names = _names(args.samplers, SAMPLERS, "samplers") or (
        list(robustness.SAMPLERS) if args.suite else default_samplers())
    if args.only_overhead:
        target_names = []
    # The overhead check belongs to the full run; quick and named runs get it with --overhead.
    run_overhead = not args.skip_overhead and (
        args.overhead or args.only_overhead or not (args.quick or args.targets or args.samplers or args.suite))
    budget = _budget_seconds(args)

    env = environment()
    stem = None if args.no_write else run_stem(args.out, env)
    artifacts_dir = None if stem is None else stem.parent / (stem.name + "-artifacts")
    _say(f"pymc-neural-steps benchmark — {env['date']}, {env['cpu_model']}, {env['nproc']} CPUs, "
         f"load {env['load_average_at_start'][0]:.2f}; Python {env['python']}, PyMC {env['packages']['pymc']}, "
         f"ArviZ {env['packages']['arviz']}, nutpie {env['packages']['nutpie']}")
    per_target = {name: target_settings(TARGETS[name], args) for name in target_names}
    _say(f"targets: {', '.join(f'{n} ({s.chains}x{s.draws}, tune {s.tune})' for n, s in per_target.items()) or '-'}")
    _say(f"samplers: {', '.join(sampler_names)}; cores={args.cores}"
         + (f"; no cell starts after {budget / 60:.1f} min" if budget else ""))
    _warm_process()

    cells: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    interrupted = False
    start = time.perf_counter()
    total = len(target_names) * len(sampler_names)
    try:
        for target_name in target_names:
            target = TARGETS[target_name]
            reference = _load_reference(target_name)
            sources[target_name] = getattr(reference, "source", f"failed to load: {reference!r}")
            for sampler_name in sampler_names:
                # --run-skipped runs the cells a target's skips keep off it (README).
                keep = args.suite or args.run_skipped
                reason = None if keep else target.skip_reason(sampler_name)
                if reason is None and budget is not None and time.perf_counter() - start > budget:
                    reason = f"time budget of {budget / 60:.0f} min spent before this cell"
                if reason is not None:
                    cell = skipped_cell(target_name, sampler_name, reason)
                else:
                    cell = run_cell(target_name, reference, SAMPLERS[sampler_name], per_target[target_name],
                                    artifacts_dir=artifacts_dir, keep_trained=target.keep_trained)
                    _release_compiled()
                cells.append(cell)
                done = f"[{len(cells)}/{total}] {target_name} / {sampler_name}: "
                if cell["status"] == "ok":
                    _say(done + f"{cell['wall_time']:.1f} s, min ESS bulk {cell['ess_bulk']:.0f}, max|z| {cell['max_abs_z']:.2f}")
                elif cell["status"] == "skipped":
                    _say(done + f"skipped — {cell['error']}")
                else:
                    _say(done + f"FAILED, continuing — {cell['error']}")
    except KeyboardInterrupt:
        interrupted = True
        _say("interrupted: reporting the cells finished so far")

    overhead = overhead_text = None
    if run_overhead and not interrupted:
        _say("per-draw cost check: JaxHMC via pm.sample vs via pns.sample ...")
        try:
            overhead = overhead_module.measure_overhead(overhead_module.QUICK if args.quick else overhead_module.FULL, log=_say)
            overhead_text = overhead_module.format_overhead(overhead)
        except KeyboardInterrupt:
            interrupted = True
        except Exception as error:  # noqa: BLE001
            overhead = {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            overhead_text = f"per-draw cost check FAILED: {overhead['error']}"

    notes = [note.format(cores=args.cores, nproc=env["nproc"]) for note in NOTES]
    if interrupted:
        notes.append("The run was interrupted; cells not listed were not run.")
    results = {
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "environment": env,
        "load_average_at_end": list(os.getloadavg()),
        "duration_s": time.perf_counter() - start,
        "settings": {
            "quick": args.quick, "cores": args.cores, "seed": args.seed, "targets": target_names,
            "samplers": sampler_names, "budget_s": budget,
            "per_target": {name: {k: getattr(s, k) for k in ("chains", "draws", "tune")} for name, s in per_target.items()},
        },
        "targets": {name: TARGETS[name].description for name in target_names},
        "target_sources": sources,
        "cells": cells,
        "overhead": overhead,
        "overhead_text": overhead_text,
        "notes": notes,
        "interrupted": interrupted,
        "artifacts_dir": None if artifacts_dir is None else artifacts_dir.name,
        "figures": [],
    }

    _say()
    if cells and args.suite:
        _say(robustness.format_suite(results))
    elif cells:
        _say(format_table(cells))
        for note in failure_notes(cells):
            _say(f"  note: {note}")
    if overhead_text:
        _say()
        _say(overhead_text)
    _say(f"\n({results['duration_s']:.0f} s in all; load average now {results['load_average_at_end'][0]:.2f})")
    if stem is None:
        return 130 if interrupted else 0

    figure_dir = args.docs if args.docs is not None else stem.parent / (stem.name + "-plots")
    if not args.no_plots and cells:
        results["figures"] = _make_figures(results, artifacts_dir, figure_dir)
    json_path, md_path = write_results(results, stem, figure_dir)
    _say(f"wrote {json_path} and {md_path}")
    if args.docs is not None and args.suite:
        _say(f"wrote {robustness.write_section(robustness.format_suite(results), args.docs / 'robustness.md')}")
    elif args.docs is not None:
        for path in write_docs(results, args.docs):
            _say(f"wrote {path}")
    return 130 if interrupted else 0


def _make_figures(results: dict[str, Any], artifacts_dir: Path, figure_dir: Path) -> list[dict[str, Any]]:
    """Every figure of ``plots.py``; a figure that fails is recorded, never fatal."""
    _say(f"figures -> {figure_dir}")
    try:
        from benchmarks import plots

        figures = plots.make_all(results, artifacts_dir, figure_dir)
    except Exception as error:  # noqa: BLE001
        return [{"name": "all", "status": "failed", "error": f"{type(error).__name__}: {error}"}]
    for figure in figures:
        _say(f"  {figure['name']}: {figure['status']}" + (f" — {figure['error']}" if figure.get("error") else ""))
    return figures
