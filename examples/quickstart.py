"""Quick start: sample eight schools with JaxHMC, through pm.sample and the fast driver.

Prints the ArviZ summary, the check against posteriordb's reference posterior, and the
time each route took next to PyMC's own NUTS, all measured in this run.
"""

import time

import arviz as az
import pymc as pm

import pymc_neural_steps as pns
from pymc_neural_steps.testing import check_exactness, eight_schools_noncentered


def timed(label, run):
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    print(f"{label:<38s} {seconds:6.1f} s (compile, warm-up and sampling)")
    return result


def main():
    reference = eight_schools_noncentered()
    settings = dict(draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False)
    with reference.build_model():
        nuts = timed("PyMC NUTS, pm.sample", lambda: pm.sample(cores=1, **settings))
        via_pymc = timed("JaxHMC, pm.sample", lambda: pm.sample(step=pns.JaxHMC(), cores=1, **settings))
        fast = timed("JaxHMC, pymc_neural_steps.sample", lambda: pns.sample(pns.JaxHMC(), **settings))

    print()
    print(az.summary(fast, var_names=["mu", "tau", "theta"]))
    for label, result in (("NUTS", nuts), ("JaxHMC via pm.sample", via_pymc), ("JaxHMC fast", fast)):
        report = check_exactness(result, reference)
        verdict = "matches" if report.passed else "DOES NOT match"
        print(f"{label}: {verdict} the reference posterior (max |z| = {report.max_abs_z:.2f})")


if __name__ == "__main__":
    main()
