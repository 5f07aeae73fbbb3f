"""NNgHMC where it pays: Gaussian-process regression, whose gradient costs ~10 log densities.

The model (``pymc_neural_steps.testing.gp_regression``): a Matérn 3/2 GP on N points in 4-d
with length scale, signal variance and noise variance free, marginal likelihood
y ~ N(0, K + σ² I). Every log density factorises the N × N covariance; every gradient also
needs its inverse and one trace per parameter, about ten times the work. NNgHMC learns the
likelihood's gradient during warm-up and then pays one log density and no gradient per draw.

The script samples the same model with PyMC's NUTS (``pm.sample``) and with NNgHMC (the fast
driver, compile, warm-up and training included), prints the ArviZ summary of both, NNgHMC's
gradient counts, and the speed-up in effective draws per second of total wall time, all
measured in this run. Run time on 2 CPU cores: 8 minutes with a busy machine
(2026-12-03: PyMC's NUTS 323 s, NNgHMC 174 s), most of it PyMC's NUTS.
Set ``GP_POINTS`` (default 300) for a larger or smaller model; the speed-up grows with N.
"""

import os

import _common  # first: one BLAS thread per process, before numpy loads
import arviz as az

import pymc_neural_steps as pns
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.testing import gp_regression

VAR_NAMES = ["length_scale", "signal_variance", "noise_variance"]
POINTS = int(os.environ.get("GP_POINTS", "300"))
SETTINGS = dict(draws=2000, tune=500, chains=2, random_seed=1, progressbar=False)


def main():
    model = gp_regression(n=POINTS).build_model()
    print(f"GP regression, Matérn 3/2, {POINTS} points in 4-d: "
          f"{SETTINGS['chains']} chains x {SETTINGS['draws']} draws after {SETTINGS['tune']} warm-up\n")
    (nuts, nuts_seconds), (fast, fast_seconds) = _common.sample_both(
        model, "NNgHMC", pns.NNgHMC, SETTINGS
    )

    print("\nPyMC NUTS")
    print(az.summary(nuts, var_names=VAR_NAMES).to_string())
    print("\nNNgHMC")
    print(az.summary(fast, var_names=VAR_NAMES).to_string())
    stats = group_dataset(fast, "sample_stats")
    print(
        f"\nNNgHMC draws: acceptance {float(stats['acceptance_rate'].mean()):.2f}, "
        f"true gradients {int(stats['n_grad_evals'].sum())}, "
        f"surrogate evaluations {int(stats['n_surrogate_evals'].sum())}, "
        f"training {float(group_dataset(fast, 'posterior').attrs['training_time']):.1f} s"
    )
    rates = _common.compare(
        [("PyMC NUTS", nuts, nuts_seconds), ("NNgHMC", fast, fast_seconds)], VAR_NAMES
    )
    print(
        "\nspeed-up of NNgHMC over PyMC NUTS (min bulk ESS per second of total wall time): "
        f"{rates['NNgHMC'] / rates['PyMC NUTS']:.1f}x"
    )


if __name__ == "__main__":
    main()
