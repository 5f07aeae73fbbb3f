"""L2HMC where leapfrog struggles: a 20-d Gaussian with eigenvalues from 1e-2 to 1e2 under a
random rotation.

A diagonal mass matrix cannot undo the rotation, so NUTS needs long trees of small steps. L2HMC
trains its learned leapfrog during warm-up (on an ensemble of walkers, expected squared jump
loss) and then samples with an exact MH test. Prints the ArviZ summary of the first
coordinates, the check against the analytic posterior, and ESS per gradient and per second of
total wall time (training included) next to PyMC's NUTS, all measured in this run.
"""

from _common import against_analytic  # first: one BLAS thread, before numpy loads

import pymc_neural_steps as pns
from pymc_neural_steps.testing import rotated_gaussian

SETTINGS = dict(draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)


def main():
    against_analytic(rotated_gaussian(20), "L2HMC", pns.L2HMC, SETTINGS)


if __name__ == "__main__":
    main()
