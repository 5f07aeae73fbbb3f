"""Smoke test of the benchmark runner's metric code (benchmarks/metrics.py, report.py); no sampling, no timing."""

import math

import numpy as np

# benchmarks/ is a top-level package of the repository (pytest puts the root on the path).
from benchmarks.metrics import cell_metrics, result_groups
from benchmarks.report import format_table
from pymc_neural_steps._compat import build_result
from pymc_neural_steps.testing import correlated_gaussian

CHAINS, DRAWS, WARMUP = 2, 500, 100
GRADS_PER_DRAW, WARMUP_GRADS_PER_DRAW = 7, 3


def _fake_result(reference, shift: float = 0.0):
    """What a sampler would return if it drew exactly from the reference (plus ``shift``)."""
    model = reference.build_model()
    x = reference.sample_exact(1, chains=CHAINS, draws=DRAWS)["x"].values + shift
    diverging = np.zeros((CHAINS, DRAWS), bool)
    diverging[0, :3] = True
    stats = {
        "acceptance_rate": np.full((CHAINS, DRAWS), 0.75),
        "diverging": diverging,
        "n_grad_evals": np.full((CHAINS, DRAWS), GRADS_PER_DRAW),
    }
    warmup_stats = {
        "acceptance_rate": np.full((CHAINS, WARMUP), 0.5),
        "diverging": np.zeros((CHAINS, WARMUP), bool),
        "n_grad_evals": np.full((CHAINS, WARMUP), WARMUP_GRADS_PER_DRAW),
    }
    return model, build_result(
        model,
        posterior={"x": x},
        sample_stats=stats,
        warmup_posterior={"x": x[:, :WARMUP]},
        warmup_sample_stats=warmup_stats,
    )


def _metrics(reference, result, model):
    return cell_metrics(
        result_groups(result),
        var_names=[rv.name for rv in model.free_RVs],
        reference=reference,
        acceptance_stat="acceptance_rate",
        gradient_stat="n_grad_evals",
        wall_time=2.0,
        cpu_time=1.5,
    )


def test_metrics_of_exact_draws_and_of_biased_draws():
    reference = correlated_gaussian(10)
    model, result = _fake_result(reference)
    m = _metrics(reference, result, model)

    n = CHAINS * DRAWS
    assert 0.6 * n < m["ess_bulk"] < 1.5 * n  # independent draws
    assert 0.6 * n < m["ess_tail"] < 1.5 * n
    assert m["ess_bulk_param"].startswith("x[")
    grads = GRADS_PER_DRAW * n
    assert m["grad_evals"] == grads
    assert m["grad_evals_warmup"] == WARMUP_GRADS_PER_DRAW * CHAINS * WARMUP
    assert math.isclose(m["ess_per_grad"], m["ess_bulk"] / grads)
    assert math.isclose(m["ess_per_grad_total"], m["ess_bulk"] / (grads + m["grad_evals_warmup"]))
    assert math.isclose(m["ess_per_second"], m["ess_bulk"] / 2.0)
    assert math.isclose(m["ess_per_draw"], m["ess_bulk"] / n)
    assert m["acceptance"] == 0.75  # draw phase only
    assert m["divergences"] == 3
    assert m["max_abs_z"] < 4 and m["r_hat_max"] < 1.02

    model, biased = _fake_result(reference, shift=0.5)
    assert _metrics(reference, biased, model)["max_abs_z"] > 10

    table = format_table([
        {"target": "gaussian_10d", "sampler": "fake", "status": "ok", **m},
        {"target": "gaussian_10d", "sampler": "absent", "status": "failed", "error": "ImportError: absent"},
    ])
    assert "FAILED" in table and "fake" in table
