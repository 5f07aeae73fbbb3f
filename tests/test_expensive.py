"""The expensive-gradient targets (``testing/expensive.py``): they build, their log density is
finite at the initial point, and it equals an independent NumPy/SciPy transcription.

The transcriptions use small versions of the same models (same code, fewer points), so they
run in milliseconds; the full-size models are only built and evaluated once each.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pymc_neural_steps.target import build_layout
from pymc_neural_steps.testing import REFERENCES, garch21, gp_regression, logistic_regression_50k
from pymc_neural_steps.testing import expensive


@pytest.mark.parametrize(
    ("factory", "dim"),
    [(gp_regression, 3), (logistic_regression_50k, 200), (garch21, 5)],
    ids=["gp", "logistic", "garch"],
)
def test_full_size_model_builds_with_finite_logp(factory, dim):
    reference = factory()
    assert reference.name in REFERENCES
    assert len(reference) == 0  # timing targets: no reference moments
    model = reference.build_model()
    assert build_layout(model).dim == dim
    # FAST_COMPILE: PyTensor's Python linker, compiled in well under a second.
    logp = model.compile_logp(mode="FAST_COMPILE")(model.initial_point())
    assert np.isfinite(logp)


def _logp(reference, point):
    """The model's log density (no Jacobian) at a point in constrained space."""
    model = reference.build_model()
    values = {}
    for rv in model.free_RVs:
        value_var = model.rvs_to_values[rv]
        transform = model.rvs_to_transforms.get(rv)
        value = np.asarray(point[rv.name], dtype=float)
        values[value_var.name] = value if transform is None else transform.forward(value, *rv.owner.inputs).eval()
    return float(model.compile_logp(jacobian=False, mode="FAST_COMPILE")(values))


def test_gp_log_density_matches_scipy():
    n, dim = 30, 4
    reference = gp_regression(n, dim)
    distance, y = expensive._gp_data(n, dim, expensive.GP_SEED)
    point = {"length_scale": 0.7, "signal_variance": 1.3, "noise_variance": 0.2}
    r = np.sqrt(3.0) * distance / point["length_scale"]
    cov = point["signal_variance"] * (1 + r) * np.exp(-r) + point["noise_variance"] * np.eye(n)
    expected = (
        stats.invgamma(3.0, scale=2.0).logpdf(point["length_scale"])
        + stats.halfnorm(scale=2.0).logpdf(point["signal_variance"])
        + stats.halfnorm(scale=1.0).logpdf(point["noise_variance"])
        + stats.multivariate_normal(np.zeros(n), cov).logpdf(y)
    )
    assert _logp(reference, point) == pytest.approx(expected, rel=1e-9)


def test_logistic_log_density_matches_numpy():
    rows, features = 200, 7
    reference = logistic_regression_50k(rows, features)
    x, y = expensive._logistic_data(rows, features, expensive.LOGISTIC_SEED)
    beta = np.linspace(-0.5, 0.5, features)
    eta = x @ beta
    expected = stats.norm.logpdf(beta).sum() + np.sum(y * eta - np.logaddexp(0.0, eta))
    assert _logp(reference, {"beta": beta}) == pytest.approx(expected, rel=1e-9)


def test_garch21_log_density_matches_numpy_recursion():
    length = 60
    reference = garch21(length)
    y = expensive._garch_data(length, expensive.GARCH_SEED)
    mu, omega = 0.1, 0.2
    weights = np.array([0.2, 0.4, 0.25, 0.15])
    alpha1, beta1, beta2 = weights[:3]
    variance = np.full(length, np.var(y))
    for t in range(2, length):
        variance[t] = omega + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * variance[t - 1] + beta2 * variance[t - 2]
    expected = (
        stats.norm.logpdf(mu)
        + stats.halfnorm.logpdf(omega)
        + stats.dirichlet(np.ones(4)).logpdf(weights)
        + stats.norm(mu, np.sqrt(variance[2:])).logpdf(y[2:]).sum()
    )
    point = {"mu": mu, "omega": omega, "persistence": weights}
    assert _logp(reference, point) == pytest.approx(expected, rel=1e-9)


def test_simulated_data_are_fixed_by_the_seed():
    assert np.array_equal(expensive._garch_data(50, 1), expensive._garch_data(50, 1))
    x1, y1 = expensive._logistic_data(20, 3, 2)
    x2, y2 = expensive._logistic_data(20, 3, 2)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
