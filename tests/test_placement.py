"""The chain axis over several devices and processes (``placement.py``, ``pns.sample``)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from pymc_neural_steps import placement
from pymc_neural_steps.placement import ChainPlacement, choose_devices

HERE = Path(__file__).parent
ROOT = HERE.parent


@pytest.fixture
def four_devices(monkeypatch):
    fakes = [SimpleNamespace(id=i, platform="gpu", process_index=0) for i in range(4)]
    monkeypatch.setattr(placement.jax, "devices", lambda: fakes)
    return fakes


def test_default_takes_as_many_devices_as_split_the_chains_evenly(four_devices):
    assert choose_devices(8) == four_devices
    assert choose_devices(6) == four_devices[:3]
    assert choose_devices(2) == four_devices[:2]
    assert choose_devices(5) == four_devices[:1]


def test_a_count_or_a_list_of_devices(four_devices):
    assert choose_devices(4, 2) == four_devices[:2]
    assert choose_devices(4, [four_devices[3]]) == [four_devices[3]]


@pytest.mark.parametrize(
    "devices, message",
    [(3, "do not split evenly"), (5, "ask for 1 to 4"), (0, "ask for 1 to 4"), ([], "is empty")],
)
def test_devices_that_cannot_hold_the_chains_are_refused(four_devices, devices, message):
    with pytest.raises(ValueError, match=message):
        choose_devices(4, devices)


def test_one_device_places_nothing():
    place = ChainPlacement.for_chains(4)
    assert not place.sharded
    assert place.describe() == f"1 device ({jax.devices()[0].platform})"
    values = np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(place.fetch(place.put(values)), values)
    fn = jax.jit(lambda x: x + 1)
    assert place.pooled(fn) is fn


def _worker(*methods: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(HERE / "placement_worker.py"), *methods],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_chains_split_over_four_cpu_devices_give_the_single_device_draws():
    report = _worker("JaxHMC")
    assert report["device_count"] == 4
    assert report["sharded"] == {"2": True, "4": True}
    # The same arithmetic: a short run agrees to rounding. (Bitwise equality of a long run,
    # report["identical"], holds on some CPUs only; docs/scaling.md.)
    assert report["close"] == {"JaxHMC": {"2": True, "4": True}}


@pytest.mark.slow
def test_learned_methods_give_the_single_device_draws_on_several_devices():
    # Their pooled training runs on one device with every chain's data (placement.pooled).
    methods = ("NNgHMC", "L2HMC", "EntropyFlowMC")
    report = _worker(*methods)
    assert report["close"] == {m: {"2": True, "4": True} for m in methods}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["JaxHMC", "NNgHMC"])
def test_two_processes_give_the_single_process_draws(tmp_path, method):
    import pymc_neural_steps as pns
    from pymc_neural_steps._compat import group_dataset

    saved = tmp_path / "b.npy"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "multi_host.py"), "--processes", "2",
         "--method", method, "--save", str(saved), "--port", str(12500 + len(method))],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 cpu devices on 2 processes" in done.stdout
    sys.path.insert(0, str(ROOT / "examples"))
    from multi_host import small_model

    result = pns.sample(getattr(pns, method)(model=small_model()), draws=300, tune=300, chains=4,
                        random_seed=1, progressbar=False, compute_convergence_checks=False)
    single = np.asarray(group_dataset(result, "posterior")["b"])
    np.testing.assert_array_equal(np.load(saved), single)
