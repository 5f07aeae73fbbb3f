"""NNgHMC on a model with an expensive gradient: GARCH(2,1) on 1,000 observations.

The variance recursion sigma²_t = omega + alpha1 (y_{t-1} - mu)² + beta1 sigma²_{t-1} +
beta2 sigma²_{t-2} is sequential in t, so every gradient runs through all 1,000 steps of it
twice (forward and back). NNgHMC learns the gradient during warm-up and then pays one log
density and no gradient per draw. This script samples the same model with PyMC's NUTS and
with NNgHMC (fast driver, training included), prints the ArviZ summary of the NNgHMC draws
and the speed-up in effective draws per second of total wall time, both measured here.
"""

import os

# On a busy machine, BLAS threads that spin while waiting for a core make every linear-algebra
# call much slower (PyMC's and ours alike); one thread per process is the fair setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
import warnings  # noqa: E402

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import pymc as pm  # noqa: E402

import pymc_neural_steps as pns  # noqa: E402
from pymc_neural_steps._compat import group_dataset  # noqa: E402
from pymc_neural_steps.testing import garch21  # noqa: E402

VAR_NAMES = ["mu", "omega", "persistence"]


def min_ess_per_second(result, seconds):
    ess = az.ess(group_dataset(result, "posterior")[VAR_NAMES], method="bulk")
    smallest = min(float(np.min(ess[name].values)) for name in VAR_NAMES)
    return smallest, smallest / seconds


def timed(label, run):
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    print(f"{label:<40s} {seconds:6.1f} s (compile, warm-up, training, sampling)", flush=True)
    return result, seconds


def main():
    model = garch21().build_model()
    settings = dict(draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False)
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        nuts, nuts_seconds = timed(
            "PyMC NUTS, pm.sample",
            lambda: pm.sample(cores=1, nuts_sampler="pymc", compute_convergence_checks=False, **settings),
        )
        step = pns.NNgHMC()
        fast, fast_seconds = timed("NNgHMC, pymc_neural_steps.sample", lambda: pns.sample(step, **settings))

    print()
    print(az.summary(fast, var_names=VAR_NAMES))
    stats = group_dataset(fast, "sample_stats")
    print(
        f"\nNNgHMC draws: acceptance {float(stats['acceptance_rate'].mean()):.2f}, "
        f"true gradients {int(stats['n_grad_evals'].sum())}, "
        f"surrogate evaluations {int(stats['n_surrogate_evals'].sum())}"
    )
    nuts_ess, nuts_rate = min_ess_per_second(nuts, nuts_seconds)
    fast_ess, fast_rate = min_ess_per_second(fast, fast_seconds)
    print(f"PyMC NUTS: min bulk ESS {nuts_ess:.0f} in {nuts_seconds:.0f} s = {nuts_rate:.1f} ESS/s")
    print(f"NNgHMC:    min bulk ESS {fast_ess:.0f} in {fast_seconds:.0f} s = {fast_rate:.1f} ESS/s")
    print(f"speed-up over PyMC NUTS (ESS per second of total wall time): {fast_rate / nuts_rate:.1f}x")


if __name__ == "__main__":
    main()
