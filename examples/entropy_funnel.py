"""EntropyFlowMC on Neal's funnel (20-d, sigma = 3): a neck that a fixed step size cannot fit.

Warm-up trains a gradient-informed flow proposal to maximise its entropy at a target acceptance
rate; the draws come from an exact MH chain with the proposal's density in both directions.
Prints the summary of the funnel's scale variable and first coordinates, the check against the
analytic posterior, and ESS per gradient and per second of total wall time (training included)
next to PyMC's NUTS, all measured in this run.
"""

import warnings

import arviz as az
import pymc as pm
from _common import compare, timed

import pymc_neural_steps as pns
from pymc_neural_steps.testing import check_exactness, funnel


def main():
    reference = funnel(20, sigma=3.0)
    settings = dict(draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)
    with reference.build_model(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*|.*divergen.*")
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
