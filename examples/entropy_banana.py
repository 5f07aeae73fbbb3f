"""EntropyFlowMC on the banana of the NNgHMC paper (A = 1, B = 0.1, C = 1): a curved ridge.

Warm-up trains a gradient-informed flow proposal to maximise its entropy at a target acceptance
rate; the draws come from an exact MH chain with the proposal's density in both directions, one
gradient per draw. Prints the summary, the check against the analytic posterior, and ESS per
gradient and per second of total wall time (training included) next to PyMC's NUTS, all
measured in this run. (Neal's funnel with sigma = 3 is NOT such a model yet: see
docs/benchmarks.md.)
"""

import warnings

import arviz as az
import pymc as pm
from _common import compare, timed

import pymc_neural_steps as pns
from pymc_neural_steps.testing import banana, check_exactness


def main():
    reference = banana(1.0, 0.1, 1.0)
    settings = dict(draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)
    with reference.build_model(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        nuts, nuts_s = timed("PyMC NUTS, pm.sample",
                             lambda: pm.sample(cores=1, nuts_sampler="pymc",
                                               compute_convergence_checks=False, **settings))
        flow, flow_s = timed("EntropyFlowMC, pymc_neural_steps.sample",
                             lambda: pns.sample(pns.EntropyFlowMC(), **settings))
    print()
    print(az.summary(flow).head(6))
    for label, result in (("NUTS", nuts), ("EntropyFlowMC", flow)):
        report = check_exactness(result, reference)
        print(f"{label}: {'matches' if report.passed else 'DOES NOT match'} the analytic "
              f"posterior (max |z| = {report.max_abs_z:.2f})")
    rates = compare([("PyMC NUTS", nuts, nuts_s), ("EntropyFlowMC", flow, flow_s)])
    print(f"EntropyFlowMC / NUTS, ESS per second of total wall time: "
          f"{rates['EntropyFlowMC'] / rates['PyMC NUTS']:.1f}x")


if __name__ == "__main__":
    main()
