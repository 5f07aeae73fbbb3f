"""Chains over several processes: ``jax.distributed`` on one machine, over the loopback address.

Each process sees its own devices (here one CPU device each); after
``jax.distributed.initialize`` the fast driver's mesh spans every process's devices, each
process runs its share of the chains, and every process gets the whole result back. On a
cluster the same code runs with one process per host (or per GPU) and the coordinator's
address in place of 127.0.0.1.

    python examples/multi_host.py                 # starts 2 processes and waits for them
    python examples/multi_host.py --processes 4   # 4 processes (chains must split evenly)
    python examples/multi_host.py --method NNgHMC # a learned method (pooled training)

A process started with ``--process-id`` is one of the workers; the first one prints the
ArviZ summary and, with ``--save``, writes the draws of ``b`` to a ``.npy`` file (the
test suite compares them with a single-process run of the same seed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHAINS = 4


def small_model():
    """Three scalars and no long sums, so that runs on any devices can be compared bit for
    bit (docs/scaling.md); the test suite samples it too."""
    import pymc as pm

    with pm.Model() as model:
        b = pm.Normal("b", 0.0, 1.0)
        pm.Normal("c", b, 2.0)
        pm.HalfNormal("d", 1.0)
    return model


def worker(process_id: int, processes: int, port: int, method: str, save: str | None) -> None:
    import jax

    # The CPU backend needs a collectives implementation for cross-process reductions.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process_id)

    import arviz as az
    import numpy as np

    import pymc_neural_steps as pns
    from pymc_neural_steps._compat import group_dataset

    step = getattr(pns, method)(model=small_model())
    result = pns.sample(step, draws=300, tune=300, chains=CHAINS, random_seed=1, progressbar=False)
    if jax.process_index() == 0:
        posterior = group_dataset(result, "posterior")
        print(f"{posterior.attrs['devices']}, {CHAINS} chains")
        print(az.summary(result).to_string())
        if save:
            np.save(save, np.asarray(posterior["b"]))
    jax.distributed.shutdown()


def launch(processes: int, port: int, method: str, save: str | None) -> int:
    """Start ``processes`` workers of this script and wait for them; their exit status."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, __file__, "--processes", str(processes), "--port", str(port),
               "--method", method]
    if save:
        command += ["--save", save]
    workers = [
        subprocess.Popen(command + ["--process-id", str(i)], env=env) for i in range(processes)
    ]
    return max(w.wait() for w in workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=12421)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--method", default="JaxHMC", help="a step method of pymc_neural_steps")
    parser.add_argument("--save", default=None)
    args = parser.parse_args()
    if args.process_id is None:
        sys.exit(launch(args.processes, args.port, args.method, args.save))
    worker(args.process_id, args.processes, args.port, args.method, args.save)


if __name__ == "__main__":
    main()
