"""Run in a fresh process by tests/test_placement.py, with XLA's CPU split into 4 devices.

XLA reads its device count once, when JAX starts, so the multi-device checks cannot run in
the test process itself. Prints one JSON object: per method and device count, whether a short
run's draws agree with the single-device run's to rounding (``close``), whether the long
run's are bitwise equal (``identical``: on some CPUs XLA rounds a sharded program's
vectorised arithmetic differently, and MCMC then amplifies the last bit; docs/scaling.md),
and whether the carry and the chunks' outputs are really split over the devices.
"""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import pymc_neural_steps as pns  # noqa: E402
from pymc_neural_steps._compat import group_dataset  # noqa: E402
from pymc_neural_steps.placement import ChainPlacement  # noqa: E402
from pymc_neural_steps.programs.base import DEFAULT_MODE  # noqa: E402
from pymc_neural_steps.sampling import _BatchedProgram  # noqa: E402

CHAINS = 4

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from multi_host import small_model  # noqa: E402


# A short run: rounding differences of 1e-16 cannot grow past this in so few iterations.
SHORT = dict(draws=5, tune=5)
CLOSE = dict(rtol=1e-9, atol=1e-12)


def draws(method: str, devices: int, draws: int = 100, tune: int = 200) -> np.ndarray:
    step = getattr(pns, method)(model=small_model())
    result = pns.sample(step, draws=draws, tune=tune, chains=CHAINS, random_seed=3,
                        progressbar=False, devices=devices, compute_convergence_checks=False)
    posterior = group_dataset(result, "posterior")
    assert posterior.attrs["devices"] == ("1 device (cpu)" if devices == 1 else f"{devices} cpu devices")
    return np.stack([np.asarray(posterior[name]) for name in ("b", "c", "d")])


def split_over(array, devices: int, axis: int) -> bool:
    shards = array.addressable_shards
    return (len(array.sharding.device_set) == devices and len(shards) == devices
            and all(s.data.shape[axis] == array.shape[axis] // devices for s in shards))


def sharding_check(devices: int) -> bool:
    step = pns.JaxHMC(model=small_model())
    target, program = step.chain_program()
    place = ChainPlacement.for_chains(CHAINS, devices)
    runner = _BatchedProgram(program, place)
    carry = runner.init(place.put(np.zeros((CHAINS, target.dim))))
    seeds = place.put(np.arange(CHAINS, dtype=np.int64))
    iterations = place.put_replicated(np.arange(5))
    codes = place.put_replicated(np.zeros(5, np.int8))
    carry, (positions, stats) = runner.tune_chunk(carry, seeds, iterations, codes, mode=DEFAULT_MODE)
    return (all(split_over(leaf, devices, 0) for leaf in jax.tree.leaves(carry))
            and split_over(positions, devices, 1) and split_over(stats, devices, 1))


def main(methods: list[str]) -> None:
    report = {"device_count": jax.device_count(), "sharded": {}, "identical": {}, "close": {}}
    for devices in (2, 4):
        report["sharded"][str(devices)] = sharding_check(devices)
    for method in methods:
        single, short = draws(method, 1), draws(method, 1, **SHORT)
        report["identical"][method] = {
            str(devices): bool(np.array_equal(single, draws(method, devices)))
            for devices in (2, 4)
        }
        report["close"][method] = {
            str(devices): bool(np.allclose(short, draws(method, devices, **SHORT), **CLOSE))
            for devices in (2, 4)
        }
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
