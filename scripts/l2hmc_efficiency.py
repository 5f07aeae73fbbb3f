"""Measure L2HMC's efficiency against nutpie, in one run on this machine (not a unit test).

    python scripts/l2hmc_efficiency.py scg icg --seeds 1 2 3
    python scripts/l2hmc_efficiency.py scg rotated banana funnel --samplers l2hmc nutpie
    python scripts/l2hmc_efficiency.py scg --samplers nutpie_nf   # needs flowjax importable
    python scripts/l2hmc_efficiency.py rotated --options "{'dense_whitening': False}"

The L2HMC table in ``docs/design-notes.md`` (L2HMC) came from

    python scripts/l2hmc_efficiency.py rotated scg icg banana funnel --draws 2000 --seeds 20240601

Targets (``pymc_neural_steps.testing``): ``scg`` the 2-d strongly correlated Gaussian
(variances 1e2 and 1e-1 rotated by π/4), ``icg`` the 50-d ill-conditioned Gaussian
(variances log-spaced in [1e-2, 1e2]), ``rotated`` the 20-d Gaussian with log-spaced
eigenvalues in [1e-2, 1e2] under a random rotation, ``banana`` (A = 1, B = 0.1, C = 1) and
``funnel`` (20-d, σ = 3).

Samplers: ``l2hmc`` is ``pns.sample(L2HMC(), ...)`` (the fast driver, one kernel trained on
the pooled ensemble; ``--driver pm`` uses ``pm.sample`` instead), ``nutpie`` nutpie's
default (numba backend) and ``nutpie_nf`` nutpie's normalising-flow adaptation (JAX
backend, ``transform_adapt``; needs ``flowjax``). Every sampler gets the same chains, draws
and tune; nutpie runs with ``cores=1``, like the benchmark runner.

ESS is ArviZ's rank-normalised bulk and tail ESS, minimum over parameters and over the two
(design.md). Per MH step: ESS / (chains × draws). Per gradient: ESS / true gradients of the
draw phase ("draws"), and / all gradients of the run ("all": warm-up iterations and, for
L2HMC, the forward gradients of training; the reverse pass of training is not counted).
ESS/s: ESS per second of the sampler's total wall time (compilation, warm-up, training and
draws). Times are wall seconds on a shared 2-core machine: the load average is printed with
every row because it moves them by a factor of two or more; the run's process CPU time (all
threads) is printed too, as a load-independent check.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import arviz as az
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import pymc as pm  # noqa: E402

import pymc_neural_steps as pns  # noqa: E402
from pymc_neural_steps._compat import group_dataset  # noqa: E402
from pymc_neural_steps.testing import (  # noqa: E402
    banana,
    check_exactness,
    funnel,
    ill_conditioned_gaussian,
    rotated_gaussian,
    strongly_correlated_gaussian,
)

TARGETS = {
    "scg": strongly_correlated_gaussian,
    "icg": ill_conditioned_gaussian,
    "rotated": rotated_gaussian,
    "funnel": funnel,
    "banana": banana,
}
# The L2HMC paper's ESS per MH step (algorithms.md §2).
PAPER = {"scg": 0.232, "icg": 0.073}
SAMPLERS = ("l2hmc", "nutpie", "nutpie_nf")


def min_ess(posterior, var_names) -> tuple[float, float]:
    """(min bulk ESS, min tail ESS) over every scalar of ``var_names``."""
    return tuple(
        min(float(az.ess(posterior[[v]], method=m)[v].min()) for v in var_names)
        for m in ("bulk", "tail")
    )


def run_l2hmc(reference, seed, args):
    options = dict(eval(args.options))
    if args.train_steps is not None:
        options["train_steps"] = args.train_steps
    with reference.build_model():
        step = pns.L2HMC(**options)
        start, start_cpu = time.perf_counter(), time.process_time()
        if args.driver == "fast":
            result = pns.sample(step, draws=args.draws, tune=args.tune, chains=args.chains,
                                random_seed=seed, progressbar=False, discard_tuned_samples=False)
        else:
            result = pm.sample(step=step, draws=args.draws, tune=args.tune, chains=args.chains,
                               cores=args.cores, random_seed=seed, progressbar=False,
                               discard_tuned_samples=False, compute_convergence_checks=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    stats, warm = group_dataset(result, "sample_stats"), group_dataset(result, "warmup_sample_stats")
    train_grads = float(warm["training_grad_evals"].sum() + stats["training_grad_evals"].sum())
    # Pooled training reports its full time on every chain; pm.sample trains chain by chain.
    combine = np.max if args.driver == "fast" else np.sum
    training_time = float(
        combine(warm["training_time"].values.sum(1)) + combine(stats["training_time"].values.sum(1))
    )
    return result, dict(
        wall_s=wall,
        cpu_s=cpu,
        draw_grads=float(stats["n_grad_evals"].sum()),
        warm_grads=float(warm["n_grad_evals"].sum()),
        train_grads=train_grads,
        training_time_s=training_time,
        acceptance=float(stats["acceptance_rate"].mean()),
        divergences=int(stats["diverging"].sum()),
    )


def run_nutpie(reference, seed, args, flow=False):
    import nutpie

    model = reference.build_model()
    start, start_cpu = time.perf_counter(), time.process_time()
    if flow:
        compiled = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax")
        compiled = compiled.with_transform_adapt()
    else:
        compiled = nutpie.compile_pymc_model(model)
    compile_s = time.perf_counter() - start
    result = nutpie.sample(compiled, draws=args.draws, tune=args.tune, chains=args.chains,
                           cores=args.cores, seed=seed, progress_bar=False, save_warmup=True,
                           **({"transform_adapt": True} if flow else {}))
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    stats, warm = group_dataset(result, "sample_stats"), group_dataset(result, "warmup_sample_stats")
    return result, dict(
        wall_s=wall,
        cpu_s=cpu,
        compile_s=compile_s,
        draw_grads=float(stats["n_steps"].sum()),
        warm_grads=float(warm["n_steps"].sum()),
        train_grads=0.0,
        training_time_s=float("nan"),
        acceptance=float(stats["mean_tree_accept"].mean()),
        divergences=int(stats["diverging"].sum()),
    )


def measure(name, sampler, seed, args):
    reference = TARGETS[name]()
    if sampler == "l2hmc":
        result, row = run_l2hmc(reference, seed, args)
    else:
        result, row = run_nutpie(reference, seed, args, flow=sampler == "nutpie_nf")
    bulk, tail = min_ess(group_dataset(result), reference.var_names)
    ess = min(bulk, tail)
    report = check_exactness(result, reference)
    total_grads = row["draw_grads"] + row["warm_grads"] + row["train_grads"]
    row.update(
        target=name,
        sampler=sampler,
        seed=seed,
        ess_bulk=bulk,
        ess_tail=tail,
        ess_per_mh_step=ess / (args.chains * args.draws),
        ess_per_grad_draws=ess / row["draw_grads"],
        ess_per_grad_all=ess / total_grads,
        ess_per_s=ess / row["wall_s"],
        exact=report.passed,
        max_abs_z=report.max_abs_z,
        load_average=os.getloadavg()[0],
    )
    return row, report


def format_row(row):
    paper = PAPER.get(row["target"]) if row["sampler"] == "l2hmc" else None
    training = (
        f", training {row['training_time_s']:.1f} s" if row["sampler"] == "l2hmc" else
        f", compile {row['compile_s']:.1f} s"
    )
    return (
        f"{row['target']:8s} {row['sampler']:9s} seed {row['seed']}: "
        f"ESS/MH step {row['ess_per_mh_step']:.3f}" + (f" (paper {paper})" if paper else "")
        + f", ESS/grad draws {row['ess_per_grad_draws']:.2e}, all {row['ess_per_grad_all']:.2e}, "
        f"ESS/s {row['ess_per_s']:.1f}, ESS bulk/tail {row['ess_bulk']:.0f}/{row['ess_tail']:.0f}, "
        f"accept {row['acceptance']:.2f}, div {row['divergences']}{training}, "
        f"run {row['wall_s']:.1f} s (CPU {row['cpu_s']:.1f} s), exact {'yes' if row['exact'] else 'NO'} "
        f"(max |z| {row['max_abs_z']:.2f}), load {row['load_average']:.1f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=["l2hmc"])
    parser.add_argument("--driver", choices=("fast", "pm"), default="fast", help="L2HMC's driver")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--cores", type=int, default=1, help="pm.sample and nutpie")
    parser.add_argument("--draws", type=int, default=5000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=None, help="L2HMC's training budget")
    parser.add_argument("--options", default="{}", help="more L2HMC options, a Python dict")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--json", default=None, help="append every row to this JSON-lines file")
    parser.add_argument("--verbose", action="store_true", help="print the exactness report")
    args = parser.parse_args()
    for name in args.targets:
        for seed in args.seeds:
            for sampler in args.samplers:
                try:
                    row, report = measure(name, sampler, seed, args)
                except Exception as error:  # noqa: BLE001 -- one failed cell must not end the run
                    print(f"{name:8s} {sampler:9s} seed {seed}: FAILED {type(error).__name__}: {error}",
                          flush=True)
                    continue
                print(format_row(row), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if args.verbose:
                    print(report.summary())
                    print(report.table(report.worst(8)), flush=True)


if __name__ == "__main__":
    main()
