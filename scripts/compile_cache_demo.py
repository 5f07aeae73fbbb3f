"""The persistent compilation cache measured: the same NNgHMC run in two fresh processes.

    python scripts/compile_cache_demo.py

Each process samples a 4-parameter linear regression (2 chains, 400 warm-up + 200 draws,
pns.sample) with an empty cache directory for the first and the filled one for the
second, and prints its wall time; the difference is compilation that was read from disk.
"""

import subprocess
import sys
import tempfile
import os

RUN = r"""
import time
import numpy as np, pymc as pm, pymc_neural_steps as pns
rng = np.random.default_rng(0)
X = rng.normal(size=(100, 3))
y = X @ np.array([1.0, 2.0, 3.0]) + rng.normal(size=100)
with pm.Model():
    b = pm.Normal("b", 0, 1, shape=3)
    s = pm.HalfNormal("s", 1)
    pm.Normal("y", pm.math.dot(X, b), s, observed=y)
    step = pns.NNgHMC()
start = time.perf_counter()
pns.sample(step, draws=200, tune=400, chains=2, random_seed=1, progressbar=False,
           compute_convergence_checks=False)
print(f"{time.perf_counter() - start:.1f}")
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYMC_NEURAL_STEPS_CACHE_DIR": cache}
        env.pop("PYMC_NEURAL_STEPS_COMPILATION_CACHE", None)
        times = []
        for label in ("empty cache", "filled cache"):
            out = subprocess.run([sys.executable, "-c", RUN], env=env, check=True,
                                 capture_output=True, text=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
            print(f"{label}: pns.sample took {times[-1]:.1f} s")
        print(f"second run / first run: {times[1] / times[0]:.2f}")


if __name__ == "__main__":
    main()
