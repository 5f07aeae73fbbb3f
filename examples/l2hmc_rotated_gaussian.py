"""L2HMC where leapfrog struggles: a 20-d Gaussian with eigenvalues from 1e-2 to 1e2 under a
random rotation.

A diagonal mass matrix cannot undo the rotation, so NUTS needs long trees of small steps. L2HMC
trains its learned leapfrog during warm-up (on an ensemble of walkers, expected squared jump
loss) and then samples with an exact MH test. Prints the ArviZ summary of the first
coordinates, the check against the analytic posterior, and ESS per gradient and per second of
total wall time (training included) next to PyMC's NUTS, all measured in this run.
"""

import warnings

import arviz as az
import pymc as pm
from _common import compare, timed

import pymc_neural_steps as pns
from pymc_neural_steps.testing import check_exactness, rotated_gaussian


def main():
    reference = rotated_gaussian(20)
    settings = dict(draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)
    with reference.build_model(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        nuts, nuts_s = timed("PyMC NUTS, pm.sample",
                             lambda: pm.sample(cores=1, nuts_sampler="pymc",
                                               compute_convergence_checks=False, **settings))
        l2hmc, l2hmc_s = timed("L2HMC, pymc_neural_steps.sample",
                               lambda: pns.sample(pns.L2HMC(), **settings))
    print()
    print(az.summary(l2hmc).head(6))
    for label, result in (("NUTS", nuts), ("L2HMC", l2hmc)):
        report = check_exactness(result, reference)
        print(f"{label}: {'matches' if report.passed else 'DOES NOT match'} the analytic "
              f"posterior (max |z| = {report.max_abs_z:.2f})")
    rates = compare([("PyMC NUTS", nuts, nuts_s), ("L2HMC", l2hmc, l2hmc_s)])
    print(f"L2HMC / NUTS, ESS per second of total wall time: "
          f"{rates['L2HMC'] / rates['PyMC NUTS']:.1f}x")


if __name__ == "__main__":
    main()
