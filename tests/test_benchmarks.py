"""The benchmark runner's metric, report and figure code (benchmarks/), on made-up results: no sampling, no timing."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

# benchmarks/ is a top-level package of the repository (pytest puts the root on the path).
from benchmarks import runner
from benchmarks.metrics import cell_metrics, result_groups
from benchmarks.report import format_table
from benchmarks.samplers import SAMPLERS, Run, Sampler
from benchmarks.targets import TARGETS
from pymc_neural_steps._compat import build_result
from pymc_neural_steps.testing import correlated_gaussian, strongly_correlated_gaussian

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


# --- training gradients, draw-phase time, references without moments ---------------------------

def _groups_with(reference, warmup_extra=None, draw_extra=None, attrs=None):
    model, result = _fake_result(reference)
    groups = result_groups(result)
    warm = groups.warmup_sample_stats.assign(**(warmup_extra or {}))
    draw = groups.sample_stats.assign(**(draw_extra or {}))
    posterior = groups.posterior.assign_attrs(**(attrs or {}))
    return model, groups._replace(posterior=posterior, sample_stats=draw, warmup_sample_stats=warm)


def _cell(reference, groups, model, **kwargs):
    return cell_metrics(
        groups, var_names=[rv.name for rv in model.free_RVs], reference=reference,
        acceptance_stat="acceptance_rate", gradient_stat="n_grad_evals", wall_time=2.0, **kwargs,
    )


def _stat(value, n):
    return (("chain", "draw"), np.full((CHAINS, n), value))


def test_training_gradients_are_counted_or_the_total_is_marked_incomplete():
    reference = correlated_gaussian(10)
    base = GRADS_PER_DRAW * CHAINS * DRAWS + WARMUP_GRADS_PER_DRAW * CHAINS * WARMUP

    # L2HMC / EntropyFlowMC: a training_grad_evals stat, added to the total
    model, groups = _groups_with(reference, warmup_extra={"training_grad_evals": _stat(10, WARMUP),
                                                         "training_loss": _stat(0.5, WARMUP)})
    m = _cell(reference, groups, model, sampling_time=0.5)
    assert m["grad_evals_training"] == 10 * CHAINS * WARMUP
    assert m["grad_evals_total"] == base + 10 * CHAINS * WARMUP
    assert m["ess_per_grad_total_complete"] is True
    assert math.isclose(m["ess_per_grad_total"], m["ess_bulk"] / m["grad_evals_total"])
    assert math.isclose(m["ess_per_second_sampling"], m["ess_bulk"] / 0.5)
    assert math.isclose(m["ess_per_step"], m["ess_bulk"] / (CHAINS * DRAWS))

    # NNgHMC: trains on recorded warm-up pairs, counted in n_grad_evals already
    model, groups = _groups_with(reference, warmup_extra={"training": _stat(False, WARMUP)},
                                 draw_extra={"n_surrogate_evals": _stat(5, DRAWS)})
    m = _cell(reference, groups, model)
    assert m["ess_per_grad_total_complete"] is True and m["grad_evals_total"] == base
    assert m["surrogate_evals"] is None  # counted only when the sampler names the stat

    # a sampler that trains and says nothing about its gradients: marked, still computed
    model, groups = _groups_with(reference, warmup_extra={"training_loss": _stat(0.5, WARMUP),
                                                         "training_time": _stat(0.25, WARMUP)})
    m = _cell(reference, groups, model)
    assert m["ess_per_grad_total_complete"] is False
    assert m["training_time"] == 0.25 * CHAINS * WARMUP
    assert math.isnan(m["ess_per_second_sampling"])  # no draw-phase time given

    # the fast driver's attribute wins over the per-draw stats
    model, groups = _groups_with(reference, attrs={"training_time": 3.0})
    assert _cell(reference, groups, model)["training_time"] == 3.0


def test_reference_without_moments_checks_nothing():
    reference = correlated_gaussian(10)
    empty = dataclasses.replace(reference, moments={})
    model, result = _fake_result(reference)
    m = _metrics(empty, result, model)
    assert math.isnan(m["max_abs_z"]) and m["exactness_passed"] is None
    row = format_table([{"target": "t", "sampler": "s", "status": "ok", **m}])
    assert "n/a" in row


# --- the runner end to end, with samplers that do not sample ----------------------------------

def _exact_sampler(name: str):
    """A Sampler returning exact draws with learned-kernel-like stats, instantly."""

    def run(model, settings):
        reference = strongly_correlated_gaussian()
        exact = reference.sample_exact(settings.seed, chains=settings.chains, draws=settings.draws + settings.tune)
        x = exact["x"].values
        c, d, t = settings.chains, settings.draws, settings.tune
        training = np.zeros((c, t), bool)
        training[:, t // 2] = True
        result = build_result(
            model,
            posterior={"x": x[:, t:]},
            sample_stats={"acceptance_rate": np.full((c, d), 0.8), "diverging": np.zeros((c, d), bool),
                          "n_grad_evals": np.full((c, d), 4)},
            warmup_posterior={"x": x[:, :t]},
            warmup_sample_stats={
                "acceptance_rate": np.linspace(0.2, 0.8, c * t).reshape(c, t), "diverging": np.zeros((c, t), bool),
                "n_grad_evals": np.full((c, t), 4), "training": training,
                "training_loss": np.where(training, -1.0, np.nan), "training_grad_evals": np.where(training, 100, 0),
                "beta": np.full((c, t), 0.5),
            },
            attrs={"sampling_time": 0.1, "training_time": 0.2},
        )
        return Run(result, wall_time=1.0, cpu_time=1.0, sampling_time=0.1, sampling_time_source="fake")

    return Sampler(name, "exact draws, no sampling", run)


def _broken_run(model, settings):
    raise RuntimeError("this sampler always fails")


def test_runner_survives_a_failing_sampler_and_writes_report_and_figures(tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "l2hmc_fake", _exact_sampler("l2hmc_fake"))
    monkeypatch.setitem(SAMPLERS, "broken", Sampler("broken", "always fails", _broken_run))
    skipping = dataclasses.replace(TARGETS["gaussian_2d_scg"], name="scg_skip", skip=(("l2hmc*", "not here"),))
    monkeypatch.setitem(TARGETS, "scg_skip", skipping)
    out, docs = tmp_path / "results", tmp_path / "docs"
    code = runner.main([
        "--targets", "gaussian_2d_scg,scg_skip", "--samplers", "l2hmc_fake,broken",
        "--draws", "200", "--tune", "100", "--chains", "2", "--skip-overhead",
        "--out", str(out), "--docs", str(docs),
    ])
    assert code == 0
    results = json.loads((docs / "benchmarks.json").read_text())
    status = {(c["target"], c["sampler"]): c["status"] for c in results["cells"]}
    assert status == {("gaussian_2d_scg", "l2hmc_fake"): "ok", ("gaussian_2d_scg", "broken"): "failed",
                      ("scg_skip", "l2hmc_fake"): "skipped", ("scg_skip", "broken"): "failed"}
    ok = results["cells"][0]
    assert ok["grad_evals_training"] == 2 * 100 and ok["ess_per_grad_total_complete"] is True
    assert ok["settings"] == {"draws": 200, "tune": 100, "chains": 2}

    markdown = (docs / "benchmarks.md").read_text()
    assert "this sampler always fails" in markdown and "not here" in markdown
    assert "L2HMC (Levy et al. 2018) SCG" in markdown  # where the reference came from
    assert "Python" in markdown and "pymc" in markdown  # machine and versions
    assert (out / f"{Path(results['artifacts_dir']).name}").is_dir()

    figures = {f["name"]: f for f in results["figures"]}
    for name in ("ess_per_grad", "ess_per_second", "training_curves"):
        assert figures[name]["status"] == "ok", figures[name]
        assert (docs / figures[name]["file"]).stat().st_size > 1000
        assert f"]({figures[name]['file']})" in markdown
    assert figures["banana_gradient_field"]["status"] == "skipped"
    assert figures["funnel_traces"]["status"] == "skipped"
    assert len(list(out.glob("*.json"))) == 1 and len(list(out.glob("*.md"))) == 1


def test_merge_fills_cells_a_budget_skipped_and_notes_the_second_run():
    from benchmarks.merge import merge

    def run(cells, command, per_target):
        return {
            "cells": cells, "command": command, "duration_s": 10.0, "notes": [],
            "settings": {"per_target": per_target}, "targets": {t: t for t in per_target},
            "target_sources": {t: "ref" for t in per_target},
            "environment": {"date": "today", "load_average_at_start": [1.0, 1.0, 1.0]},
        }

    first = run([{"target": "a", "sampler": "s", "status": "ok", "ess_bulk": 1.0},
                 {"target": "b", "sampler": "s", "status": "skipped"}], "first", {"a": {}, "b": {}})
    second = run([{"target": "b", "sampler": "s", "status": "ok", "ess_bulk": 2.0},
                  {"target": "a", "sampler": "s", "status": "ok", "ess_bulk": 9.0}], "second", {"b": {}})
    merged = merge(first, second)
    by_key = {(c["target"], c["sampler"]): c for c in merged["cells"]}
    assert by_key[("a", "s")]["ess_bulk"] == 1.0  # a cell that ran is kept
    assert by_key[("b", "s")]["ess_bulk"] == 2.0  # a skipped one is filled
    assert merged["duration_s"] == 20.0
    assert "`second`" in merged["notes"][-1] and "b / s" in merged["notes"][-1]
    assert first["cells"][1]["status"] == "skipped"  # the inputs are not modified


def test_run_skipped_runs_the_cells_a_target_skips(tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "l2hmc_fake", _exact_sampler("l2hmc_fake"))
    skipping = dataclasses.replace(TARGETS["gaussian_2d_scg"], name="scg_skip", skip=(("l2hmc*", "not here"),))
    monkeypatch.setitem(TARGETS, "scg_skip", skipping)
    args = ["--targets", "scg_skip", "--samplers", "l2hmc_fake", "--draws", "200", "--tune", "100",
            "--chains", "2", "--skip-overhead", "--no-plots"]
    statuses = []
    for extra, out in (([], tmp_path / "plain"), (["--run-skipped"], tmp_path / "run_skipped")):
        assert runner.main([*args, *extra, "--out", str(out)]) == 0
        [run] = out.glob("*.json")
        statuses.append(json.loads(run.read_text())["cells"][0]["status"])
    assert statuses == ["skipped", "ok"]
