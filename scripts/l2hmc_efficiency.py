"""Measure L2HMC's efficiency on the L2HMC paper's Gaussians (not a unit test).

    python scripts/l2hmc_efficiency.py scg --seeds 1 2 3
    python scripts/l2hmc_efficiency.py icg --seeds 1 2 3
    python scripts/l2hmc_efficiency.py funnel --chains 16

ESS is ArviZ's rank-normalised bulk and tail ESS, minimum over parameters (design.md).
Per MH step: ESS / (chains × draws). Per gradient: ESS / true gradients of the draw phase,
and / all gradients of the run (HMC warm-up, the chains' warm-up transitions and the
forward gradients of training; the reverse pass of training is not counted). Times are
wall seconds: training (the optimiser's rounds, as the driver measures them, compilation
of the training loop included) and the whole run.
"""

from __future__ import annotations

import argparse
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


def measure(name, seed, args):
    reference = TARGETS[name]()
    options = dict(train_steps=args.train_steps, **eval(args.options))
    if args.jitter is not None:
        options["step_size_jitter"] = args.jitter
    with reference.build_model():
        step = pns.L2HMC(**options)
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
    ess = min(
        min(float(az.ess(posterior[[v]], method=m)[v].min()) for v in reference.var_names)
        for m in ("bulk", "tail")
    )
    draw_grads = float(stats["n_grad_evals"].sum())
    warm_grads = float(warm["n_grad_evals"].sum())
    train_grads = float(warm["training_grad_evals"].sum() + stats["training_grad_evals"].sum())
    training_time = float(warm["training_time"].values.max(0).sum() + stats["training_time"].values.max(0).sum())
    report = check_exactness(result, reference)
    return {
        "target": reference.name,
        "seed": seed,
        "ess_per_mh_step": ess / n,
        "ess_per_grad_draws": ess / draw_grads,
        "ess_per_grad_all": ess / (draw_grads + warm_grads + train_grads),
        "acceptance": float(stats["acceptance_rate"].mean()),
        "training_time_s": training_time,
        "wall_s": wall,
        "exact": report.passed,
        "max_abs_z": report.max_abs_z,
        "report": report,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--driver", choices=("fast", "pm"), default="fast")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--draws", type=int, default=5000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--jitter", type=float, default=None)
    parser.add_argument("--options", default="{}", help="more L2HMC options, a Python dict")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--verbose", action="store_true", help="print the exactness report")
    args = parser.parse_args()
    for seed in args.seeds:
        row = measure(args.target, seed, args)
        paper = PAPER.get(args.target)
        print(
            f"{row['target']} seed {seed}: ESS/MH step {row['ess_per_mh_step']:.3f}"
            + (f" (paper {paper})" if paper else "")
            + f", ESS/grad draws {row['ess_per_grad_draws']:.4f}, with warm-up and training "
            f"{row['ess_per_grad_all']:.2e}, acceptance {row['acceptance']:.2f}, training "
            f"{row['training_time_s']:.1f} s, run {row['wall_s']:.1f} s, exactness "
            f"{'passed' if row['exact'] else 'FAILED'} (max |z| {row['max_abs_z']:.2f})",
            flush=True,
        )
        if args.verbose:
            print(row["report"].summary())
            print(row["report"].table(row["report"].worst(8)), flush=True)


if __name__ == "__main__":
    main()
