"""The robustness suite's pass rule, table and doc section (benchmarks/robustness.py), on made-up cells."""

import dataclasses

import numpy as np

from benchmarks import robustness, runner
from benchmarks.samplers import SAMPLERS, Run, Sampler
from benchmarks.targets import TARGETS, suite_targets
from pymc_neural_steps import testing
from pymc_neural_steps._compat import build_result


def _cell(sampler="jaxhmc", target="t", **values):
    cell = {"target": target, "sampler": sampler, "status": "ok", "r_hat_max": 1.002, "max_abs_z": 1.5,
            "max_abs_z_param": "mu mean", "ess_bulk": 900.0, "ess_per_second": 50.0, "ess_per_grad_total": 0.01,
            "wall_time": 20.0}
    return cell | values


def test_verdict_applies_each_threshold():
    assert robustness.verdict(_cell(), nuts_ess=1000.0) == (True, [])
    assert robustness.verdict(_cell(r_hat_max=1.01), 1000.0)[0] is False
    assert robustness.verdict(_cell(max_abs_z=4.6), 1000.0)[0] is False
    assert robustness.verdict(_cell(max_abs_z=4.5), 1000.0)[0] is True
    assert robustness.verdict(_cell(max_abs_z=float("nan")), 1000.0)[0] is False
    # the ESS floor applies only where NUTS reached it in the same run
    assert robustness.verdict(_cell(ess_bulk=300.0), nuts_ess=1000.0)[0] is False
    assert robustness.verdict(_cell(ess_bulk=300.0), nuts_ess=350.0)[0] is True
    assert robustness.verdict(_cell(ess_bulk=300.0), nuts_ess=None)[0] is True
    assert robustness.verdict({"status": "failed", "error": "boom"}, 1000.0) == (None, ["boom"])


def test_kernel_used_reads_the_gate_or_the_surrogate_check():
    assert robustness.kernel_used(_cell(training_report={"gate_use_learned": False})) == "HMC"
    assert robustness.kernel_used(_cell(training_report={"gate_use_learned": True})) == "learned"
    assert robustness.kernel_used(_cell(training_report={"passed": True})) == "learned"
    assert robustness.kernel_used(_cell(training_report=None)) == ""


def test_pass_counts_and_best_baseline_ratio():
    cells = [_cell("pymc_nuts", ess_per_second=10.0), _cell("nutpie", ess_per_second=40.0),
             _cell("l2hmc", ess_bulk=100.0, ess_per_second=20.0), _cell("jaxhmc", status="failed", error="x")]
    assert robustness.pass_counts(cells) == {"pymc_nuts": (1, 1), "nutpie": (1, 1), "l2hmc": (0, 1)}
    row = dict(zip(robustness.HEADER, robustness._row(cells[2], cells), strict=True))
    assert row["vs best baseline"] == "0.50" and row["pass"] == "**no**" and "ESS 100" in row["why not"]


def test_write_section_replaces_only_between_markers(tmp_path):
    path = tmp_path / "robustness.md"
    path.write_text("# Robustness\n\nhand-written text\n")
    robustness.write_section("first table\n", path)
    robustness.write_section("second table\n", path)
    text = path.read_text()
    assert text.startswith("# Robustness\n\nhand-written text\n")
    assert "second table" in text and "first table" not in text
    assert text.count(robustness.BEGIN) == 1 and text.count(robustness.END) == 1


def test_suite_targets_are_the_testing_packages_list():
    names = [TARGETS[name].reference().name for name in suite_targets(robustness.SUITE)]
    assert sorted(names) == sorted(testing.ROBUSTNESS_SUITE)
    assert set(robustness.SAMPLERS) <= set(SAMPLERS)


def test_suite_run_writes_its_section(tmp_path, monkeypatch):
    reference = testing.correlated_gaussian(2)

    def exact(model, settings):
        draws = reference.sample_exact(3, chains=settings.chains, draws=settings.draws)
        shape = (settings.chains, settings.draws)
        result = build_result(model, posterior={"x": draws["x"].values},
                              sample_stats={"acceptance_rate": np.full(shape, 0.9), "n_grad_evals": np.full(shape, 5)})
        return Run(result, wall_time=1.0, cpu_time=1.0)

    monkeypatch.setitem(SAMPLERS, "exact_fake", Sampler("exact_fake", "exact draws", exact))
    monkeypatch.setitem(TARGETS, "suite_fake", dataclasses.replace(
        TARGETS["gaussian_10d"], name="suite_fake", reference=lambda: reference, suites=(robustness.SUITE,)))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "robustness.md").write_text("# Robustness\n")
    code = runner.main(["--suite", "robustness", "--targets", "suite_fake", "--samplers", "exact_fake",
                        "--draws", "200", "--tune", "0", "--no-plots", "--out", str(tmp_path / "out"), "--docs", str(docs)])
    assert code == 0
    text = (docs / "robustness.md").read_text()
    assert "| suite_fake | exact_fake | yes |" in text and "| exact_fake | 1 / 1 |" in text
