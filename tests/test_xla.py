"""The guard against jaxlib < 0.11's batched-LAPACK deadlock (``_xla.py``)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps import _xla

# Six independent Cholesky factorisations of vmapped 200 x 200 matrices, 300 times: on jaxlib
# 0.10 with JAX's own batching rule this hung in 3 of 3 runs on the 2-core machine, and
# finished in about 2 s with the package imported.
REPRODUCER = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    {setup}
    jax.config.update("jax_enable_x64", True)

    def logdensity(x):
        total = 0.0
        for i in range(6):
            a = jnp.eye(200) * (2.0 + 0.1 * i + x[0] ** 2) + 0.01
            total = total + jnp.sum(jnp.log(jnp.diag(jnp.linalg.cholesky(a))))
        return total - 0.5 * jnp.sum(x ** 2)

    f = jax.jit(jax.vmap(logdensity))
    x = jnp.ones((4, 3))
    for _ in range(300):
        jax.block_until_ready(f(x))
    print("finished")
    """
)


def test_version_rule():
    assert _xla.affected("0.10.2") and _xla.affected("0.4.30")
    assert not _xla.affected("0.11.2") and not _xla.affected("1.0.0")
    assert not _xla.install(environ={_xla.KEEP_VARIABLE: "1"}) or _xla._installed


def logdensity(x):
    a = jnp.eye(5) * (1.0 + x[0] ** 2) + 0.1 * jnp.outer(x, x)[:5, :5].sum()
    chol = jnp.linalg.cholesky(a)
    solved = jax.scipy.linalg.solve_triangular(chol, jnp.arange(5.0), lower=True)
    return -jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * jnp.sum(solved**2) - 0.5 * jnp.sum(x**2)


def test_sequential_rule_gives_the_same_values_and_derivatives():
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    _xla.uninstall()
    try:
        expected = jax.vmap(jax.value_and_grad(logdensity))(x)
        hessian = jax.vmap(jax.hessian(logdensity))(x)
    finally:
        _xla.install(environ={}, version="0.10.0")
    text = str(jax.make_jaxpr(jax.vmap(jax.grad(logdensity)))(x))
    assert "cholesky" in text and ("while" in text or "scan" in text)
    got = jax.vmap(jax.value_and_grad(logdensity))(x)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.vmap(jax.hessian(logdensity))(x), hessian, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not _xla.affected(), reason="jaxlib >= 0.11 does not parallelise LAPACK")
def test_the_reproducer_finishes_with_the_package_imported():
    code = REPRODUCER.format(setup="import pymc_neural_steps")
    env = {k: v for k, v in os.environ.items() if k != _xla.KEEP_VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finished" in out.stdout
