"""NNgHMC where it pays, through the interface users know: pm.sample(step=pns.NNgHMC()).

The model (``pymc_neural_steps.testing.gp_regression``): a Matérn 3/2 GP on N points in 4-d
with length scale, signal variance and noise variance free, marginal likelihood
y ~ N(0, K + σ² I). Every log density factorises the N × N covariance; every gradient also
needs its inverse and one trace per parameter, several times the work. NNgHMC learns the
likelihood's gradient during warm-up and then pays one log density and no gradient per draw.

The script samples the same model with nutpie (PyMC 6's default sampler, numba backend)
and with ``pm.sample(step=pns.NNgHMC())``, prints the ArviZ summary of both, NNgHMC's
gradient counts and the speed-up in effective draws per second of total wall time
(compile, warm-up, training and draws), all measured in this run.
Set ``GP_POINTS`` (default 250) and ``GP_DRAWS`` (default 2,500) for a larger or smaller
run; the speed-up grows with both (NNgHMC's draws cost one log density each). Measured on
2 CPU cores, 2026-12-04: nutpie 97 s, NNgHMC 64 s, 2.1x (with 1,000 draws: 1.2x).
"""

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  first: one BLAS thread per process, before numpy loads
import arviz as az  # noqa: E402
import pymc as pm  # noqa: E402

import pymc_neural_steps as pns  # noqa: E402
from pymc_neural_steps._compat import group_dataset  # noqa: E402
from pymc_neural_steps.testing import gp_regression  # noqa: E402

VAR_NAMES = ["length_scale", "signal_variance", "noise_variance"]
POINTS = int(os.environ.get("GP_POINTS", "250"))
CHAINS, DRAWS, TUNE, SEED = 2, int(os.environ.get("GP_DRAWS", "2500")), 500, 1


def with_nutpie(model):
    import nutpie

    compiled = nutpie.compile_pymc_model(model)
    return nutpie.sample(compiled, draws=DRAWS, tune=TUNE, chains=CHAINS, cores=CHAINS,
                         seed=SEED, progress_bar=False)


def with_nnghmc(model):
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        return pm.sample(step=pns.NNgHMC(), draws=DRAWS, tune=TUNE, chains=CHAINS,
                         cores=CHAINS, random_seed=SEED, progressbar=False)


def main():
    model = gp_regression(n=POINTS).build_model()
    print(f"GP regression, Matérn 3/2, {POINTS} points in 4-d: "
          f"{CHAINS} chains x {DRAWS} draws after {TUNE} warm-up\n")
    nutpie_result, nutpie_seconds = _common.timed("nutpie (PyMC 6's default)", lambda: with_nutpie(model))
    ours, ours_seconds = _common.timed("pm.sample(step=pns.NNgHMC())", lambda: with_nnghmc(model))

    print("\nnutpie")
    print(az.summary(nutpie_result, var_names=VAR_NAMES).to_string())
    print("\nNNgHMC")
    print(az.summary(ours, var_names=VAR_NAMES).to_string())
    stats = group_dataset(ours, "sample_stats")
    print(f"\nNNgHMC draws: acceptance {float(stats['acceptance_rate'].mean()):.2f}, "
          f"true gradients {int(stats['n_grad_evals'].sum())}, "
          f"surrogate evaluations {int(stats['n_surrogate_evals'].sum())}")
    rates = _common.compare([("nutpie", nutpie_result, nutpie_seconds),
                             ("NNgHMC", ours, ours_seconds)], VAR_NAMES)
    print("\nspeed-up of NNgHMC over nutpie (min bulk ESS per second of total wall time): "
          f"{rates['NNgHMC'] / rates['nutpie']:.1f}x")


if __name__ == "__main__":
    main()
