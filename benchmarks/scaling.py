"""How the fast driver's cost grows with the number of chains, on one device.

    python -m benchmarks.scaling                      # 4, 16, 64, 256 chains; prints the table
    python -m benchmarks.scaling --docs docs          # ... and writes it into docs/scaling.md
    python -m benchmarks.scaling --chains 4,16 --samplers jaxhmc --targets banana

Every cell is one ``pns.sample`` call (500 draws after 500 warm-up iterations per chain, the
defaults otherwise) on the 20-d rotated Gaussian and the banana. It reports the total wall
time (compile, warm-up, training, draws), the draw phase's, the minimum bulk ESS over the
coordinates, and ESS per second of each. On a device with spare parallel width (a GPU) more
chains cost little more time each, so ESS per second grows with them; on a CPU with few
cores the work grows with the chains and ESS per second stays about flat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import arviz as az
import jax
import numpy as np

import pymc_neural_steps as pns
from benchmarks import report
from pymc_neural_steps import testing
from pymc_neural_steps._compat import group_dataset

__all__ = ["CHAINS", "SAMPLERS", "TARGETS", "format_table", "main", "run_cell"]

CHAINS = (4, 16, 64, 256)
SAMPLERS = {"jaxhmc": pns.JaxHMC, "entropyflow": pns.EntropyFlowMC}
TARGETS = {
    "gaussian_20d_rotated": lambda: testing.rotated_gaussian(20),
    "banana": lambda: testing.banana(1.0, 0.1, 1.0),
}
SETTINGS = dict(draws=500, tune=500)
BEGIN = "<!-- chain-scaling: begin (written by python -m benchmarks.scaling) -->"
END = "<!-- chain-scaling: end -->"


def run_cell(target: str, sampler: str, chains: int, seed: int = 1) -> dict:
    model = TARGETS[target]().build_model()
    start = time.perf_counter()
    result = pns.sample(SAMPLERS[sampler](model=model), chains=chains, random_seed=seed,
                        progressbar=False, compute_convergence_checks=False, **SETTINGS)
    total = time.perf_counter() - start
    posterior = group_dataset(result, "posterior")
    ess = az.ess(posterior, method="bulk")
    min_ess = float(min(np.min(np.asarray(ess[name])) for name in ess.data_vars))
    draw_seconds = float(posterior.attrs["sampling_time"])
    return {
        "target": target, "sampler": sampler, "chains": chains, "total_s": total,
        "draw_s": draw_seconds, "min_bulk_ess": min_ess,
        "ess_per_s": min_ess / total, "draw_ess_per_s": min_ess / draw_seconds,
    }


def format_table(cells: list[dict]) -> str:
    header = ("target", "sampler", "chains", "total s", "draws s", "min bulk ESS",
              "ESS/s total", "ESS/s draws")
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in cells:
        rows.append(
            f"| {c['target']} | {c['sampler']} | {c['chains']} | {c['total_s']:.1f} | "
            f"{c['draw_s']:.2f} | {c['min_bulk_ess']:.0f} | {c['ess_per_s']:.0f} | "
            f"{c['draw_ess_per_s']:.0f} |"
        )
    return "\n".join(rows)


def machine() -> str:
    env, device = report.environment(), jax.devices()[0]
    return (f"{env['cpu_model']} ({env['usable_cpus']} cores), {jax.device_count()} "
            f"{device.platform} device(s), jax {env['packages']['jax']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", default=",".join(map(str, CHAINS)))
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--docs", type=Path, default=None)
    args = parser.parse_args(argv)
    cells = []
    start = time.perf_counter()
    for target in args.targets.split(","):
        for sampler in args.samplers.split(","):
            for chains in (int(c) for c in args.chains.split(",")):
                cells.append(run_cell(target, sampler, chains))
                print(format_table(cells[-1:]).splitlines()[-1], flush=True)
    minutes = (time.perf_counter() - start) / 60
    table = (f"{format_table(cells)}\n\nMachine: {machine()}; the whole run took "
             f"{minutes:.0f} min ({time.strftime('%Y-%m-%d')}).")
    print("\n" + table)
    if args.docs is not None:
        path = report.write_marked_section(table + "\n", args.docs / "scaling.md", BEGIN, END,
                                           "Cost against the number of chains")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
