"""Measure EntropyFlowMC's efficiency on the paper's targets and the issue's (not a unit test).

    python scripts/entropy_efficiency.py scg icg rotated banana funnel german   # the table in
                                            # docs/design-notes.md (4 × 2000 draws, seed 20240601)
    python scripts/entropy_efficiency.py rotated --options "dict(dense_whitening=False)"
    python scripts/entropy_efficiency.py funnel --chains 16 --seeds 1 2
    python scripts/entropy_efficiency.py scg --options "dict(use_r=True)"

Draw phase of the fast driver (``pymc_neural_steps.sample``), defaults unless ``--options``.
ESS is ArviZ's rank-normalised bulk and tail ESS, minimum over all parameters (design.md).
Per MH step: ESS / (chains × draws). Per gradient: ESS / true gradients of the draw phase,
and / all gradients of the run (HMC warm-up, the chains' warm-up transitions and the
forward gradients of training; the backward pass of training is not counted). German
credit: min ESS per 5000 MH steps (the paper's unit), i.e. ESS/MH step × 5000. ESS per
second: over the whole wall time of the run (compilation, HMC warm-up and training
included). Training cost (forward gradients, wall seconds) is printed next to each figure.
"""

from __future__ import annotations

import argparse
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
    correlated_gaussian,
    funnel,
    german_credit,
    ill_conditioned_gaussian,
    rotated_gaussian,
    strongly_correlated_gaussian,
)

TARGETS = {
    "scg": strongly_correlated_gaussian,
    "icg": ill_conditioned_gaussian,
    "funnel": funnel,
    "german": german_credit,
    "rotated": rotated_gaussian,
    "banana": banana,
    "correlated": correlated_gaussian,
}
# The paper's figures and the floors (algorithms.md §3, issue 5).
PAPER = {
    "scg": "ESS/grad >= 0.2 (paper 0.22)",
    "icg": "ESS/grad >= 0.2 (paper 0.215)",
    "funnel": "ESS/MH >= 0.25 (paper 0.256)",
    "german": "ESS per 5000 MH >= 3000 (paper 3150)",
}


def min_ess(posterior, var_names):
    out = {}
    for method in ("bulk", "tail"):
        ess = az.ess(posterior[list(var_names)], method=method)
        out[method] = min(float(ess[v].min()) for v in var_names)
    return out


def measure(name, seed, args):
    reference = TARGETS[name]()
    options = eval(args.options)  # noqa: S307 -- a developer's command line
    with reference.build_model():
        step = pns.EntropyFlowMC(**options)
        start = time.perf_counter()
        if args.driver == "fast":
            result = pns.sample(step, draws=args.draws, tune=args.tune, chains=args.chains,
                                random_seed=seed, progressbar=False, discard_tuned_samples=False)
        else:
            result = pm.sample(step=step, draws=args.draws, tune=args.tune, chains=args.chains,
                               cores=args.cores, random_seed=seed, progressbar=False,
                               discard_tuned_samples=False, compute_convergence_checks=False)
        wall = time.perf_counter() - start
    posterior = group_dataset(result)
    stats, warm = group_dataset(result, "sample_stats"), group_dataset(result, "warmup_sample_stats")
    n = args.chains * args.draws
    ess = min_ess(posterior, reference.var_names)
    ess_min = min(ess.values())
    draw_grads = float(stats["n_grad_evals"].sum())
    warm_grads = float(warm["n_grad_evals"].sum())
    train_grads = float(warm["training_grad_evals"].sum() + stats["training_grad_evals"].sum())
    training_time = float(warm["training_time"].values.max(0).sum()
                          + stats["training_time"].values.max(0).sum())
    report = check_exactness(result, reference)
    return {
        "target": reference.name,
        "seed": seed,
        "ess_bulk": ess["bulk"],
        "ess_tail": ess["tail"],
        "ess_per_mh_step": ess_min / n,
        "ess_per_grad_draws": ess_min / draw_grads,
        "ess_per_grad_all": ess_min / (draw_grads + warm_grads + train_grads),
        "ess_per_second": ess_min / wall,
        "acceptance": float(stats["acceptance_rate"].mean()),
        "step_size": float(stats["step_size"].mean()),
        "diverging": int(stats["diverging"].sum()),
        "train_grads": train_grads,
        "warm_grads": warm_grads,
        "training_time_s": training_time,
        "wall_s": wall,
        "exact": report.passed,
        "max_abs_z": report.max_abs_z,
        "report": report,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--driver", choices=("fast", "pm"), default="fast")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--options", default="{}", help="EntropyFlowMC options, a Python dict")
    parser.add_argument("--seeds", type=int, nargs="+", default=[20240601])
    parser.add_argument("--verbose", action="store_true", help="print the exactness report")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    for name in args.targets:
        for seed in args.seeds:
            row = measure(name, seed, args)
            german = f", min ESS per 5000 MH {5000 * row['ess_per_mh_step']:.0f}" if name == "german" else ""
            print(
                f"{row['target']} seed {seed}: ESS/MH step {row['ess_per_mh_step']:.3f}"
                f" (bulk {row['ess_bulk']:.0f}, tail {row['ess_tail']:.0f}){german},"
                f" ESS/grad draws {row['ess_per_grad_draws']:.4f}, with warm-up and training "
                f"{row['ess_per_grad_all']:.2e}, ESS/s total wall {row['ess_per_second']:.1f};"
                f" acceptance {row['acceptance']:.2f}, eps {row['step_size']:.3f},"
                f" divergent {row['diverging']}; training {row['train_grads']:.3g} grads"
                f" {row['training_time_s']:.1f} s, HMC warm-up + warm-up draws"
                f" {row['warm_grads']:.3g} grads, run {row['wall_s']:.1f} s; exactness "
                f"{'passed' if row['exact'] else 'FAILED'} (max |z| {row['max_abs_z']:.2f})"
                + (f"  [{PAPER[name]}]" if name in PAPER else ""),
                flush=True,
            )
            if args.verbose:
                print(row["report"].summary())
                print(row["report"].table(row["report"].worst(8)), flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
