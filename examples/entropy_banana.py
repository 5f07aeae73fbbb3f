"""EntropyFlowMC on the banana of the NNgHMC paper (A = 1, B = 0.1, C = 1): a curved ridge.

Warm-up trains a gradient-informed flow proposal to maximise its entropy at a target acceptance
rate; the draws come from an exact MH chain with the proposal's density in both directions, one
gradient per draw. Prints the summary, the check against the analytic posterior, and ESS per
gradient and per second of total wall time (training included) next to PyMC's NUTS, all
measured in this run. (Neal's funnel with sigma = 3 is NOT such a model yet: see
docs/benchmarks.md.)
"""

from _common import against_analytic  # first: one BLAS thread, before numpy loads

import pymc_neural_steps as pns
from pymc_neural_steps.testing import banana

SETTINGS = dict(draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)


def main():
    against_analytic(banana(1.0, 0.1, 1.0), "EntropyFlowMC", pns.EntropyFlowMC, SETTINGS)


if __name__ == "__main__":
    main()
