"""Helpers shared by the example scripts: wall-clock timing and ESS summaries."""

import os

# On a busy machine, BLAS threads spinning while they wait for a core slow every linear-algebra
# call (PyMC's and ours alike); one thread per process is the fair setting for a comparison.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
import warnings  # noqa: E402

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import pymc as pm  # noqa: E402

import pymc_neural_steps as pns  # noqa: E402

from pymc_neural_steps._compat import group_dataset  # noqa: E402


def timed(label, run):
    """Run ``run()``, print its wall time, return (result, seconds)."""
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    print(f"{label:<44s} {seconds:6.1f} s (compile, warm-up, training, sampling)", flush=True)
    return result, seconds


def min_bulk_ess(result, var_names=None):
    """The smallest bulk ESS over every scalar of ``var_names`` (default: all variables)."""
    posterior = group_dataset(result, "posterior")
    if var_names is not None:
        posterior = posterior[list(var_names)]
    ess = az.ess(posterior, method="bulk")
    return min(float(np.min(ess[name].values)) for name in ess.data_vars)


def draw_gradients(result):
    """True gradient evaluations in the draw phase (NUTS: its leapfrog steps)."""
    stats = group_dataset(result, "sample_stats")
    name = "n_grad_evals" if "n_grad_evals" in stats else "n_steps"
    return float(stats[name].values.sum())


def compare(rows, var_names=None):
    """Print ESS, ESS per true gradient of the draw phase and per second of total wall time
    for each (label, result, seconds)."""
    print(f"\n{'sampler':<24s} {'min ESS':>8s} {'ESS/grad':>9s} {'ESS/s total':>12s}")
    rates = {}
    for label, result, seconds in rows:
        ess = min_bulk_ess(result, var_names)
        grads = draw_gradients(result)
        rates[label] = ess / seconds
        per_grad = f"{ess / grads:9.4f}" if grads else f"{'inf':>9s}"  # no true gradient
        print(f"{label:<24s} {ess:8.0f} {per_grad} {ess / seconds:12.2f}")
    return rates


def sample_both(model, label, make_step, settings):
    """PyMC's NUTS (``pm.sample``) and ``make_step()`` (``pns.sample``) on ``model`` with the
    same settings, each timed: ((nuts, seconds), (ours, seconds))."""
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        nuts = timed(
            "PyMC NUTS, pm.sample",
            lambda: pm.sample(cores=1, nuts_sampler="pymc", compute_convergence_checks=False,
                              **settings),
        )
        ours = timed(f"{label}, pymc_neural_steps.sample", lambda: pns.sample(make_step(), **settings))
    return nuts, ours


def against_analytic(reference, label, make_step, settings):
    """The body of the examples with an analytic posterior: sample with NUTS and with the
    step, print the step's summary, both exactness checks and the comparison."""
    from pymc_neural_steps.testing import check_exactness

    (nuts, nuts_s), (ours, ours_s) = sample_both(reference.build_model(), label, make_step, settings)
    print()
    print(az.summary(ours).head(6))
    for name, result in (("NUTS", nuts), (label, ours)):
        report = check_exactness(result, reference)
        print(f"{name}: {'matches' if report.passed else 'DOES NOT match'} the analytic "
              f"posterior (max |z| = {report.max_abs_z:.2f})")
    rates = compare([("PyMC NUTS", nuts, nuts_s), (label, ours, ours_s)])
    print(f"{label} / NUTS, ESS per second of total wall time: "
          f"{rates[label] / rates['PyMC NUTS']:.1f}x")
