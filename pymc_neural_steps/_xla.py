"""A guard against a deadlock of jaxlib < 0.11's CPU LAPACK kernels under ``vmap``.

jaxlib 0.10's CPU kernels for batched linear algebra (Cholesky, triangular solves, LU, ...)
split the batch over XLA's intra-op thread pool and block the calling thread until the
pieces are done. The calling thread is itself a worker of that pool, so when as many such
kernels run at once as the pool has threads (two on a 2-core machine: a Cholesky and a
triangular solve of the same gradient, say) every worker waits for work that no worker is
free to do, and the process hangs at 0 % CPU. Our samplers batch exactly such calls: the
fast driver vmaps the chains, and the trainers vmap walkers and assessment trajectories.
Measured here (jax 0.10.2, 2 cores): NNgHMC on the 500-point GP regression hung in two of
four runs (both in the surrogate's assessment, 32 vmapped true-gradient trajectories); a
jitted function with six independent Cholesky factorisations of a (4, 200, 200) batch hung
in 2 of 2 runs, the same with each factorisation mapped one matrix at a time in 0 of 3;
jax 0.12 (which no longer parallelises these kernels) in 0 of 1.

So, on jaxlib < 0.11, :func:`install` replaces the ``vmap`` rule of every LAPACK-backed
primitive by one that factorises the batch one matrix at a time (``lax.map``) when the
default backend is the CPU; everything around those calls stays vectorised, and on other
backends, or with jaxlib >= 0.11, nothing changes. It costs the batch parallelism of those
kernels (at most the number of cores, only in the factorisations) and is differentiable like
any ``lax.map``. Batches that a model itself carries (a stack of matrices in one variable)
are not vmapped and so not covered. Set ``PYMC_NEURAL_STEPS_KEEP_LAPACK_BATCHING=1`` to
keep JAX's own rules.
"""

from __future__ import annotations

import os

import jax
import jaxlib
from jax._src.interpreters import batching
from jax._src.lax import linalg

KEEP_VARIABLE = "PYMC_NEURAL_STEPS_KEEP_LAPACK_BATCHING"
# The primitives whose CPU lowering calls a LAPACK kernel over the batch.
LAPACK_PRIMITIVES = (
    "cholesky_p",
    "eig_p",
    "eigh_p",
    "geqp3_p",
    "geqrf_p",
    "hessenberg_p",
    "householder_product_p",
    "lu_p",
    "ormqr_p",
    "schur_p",
    "svd_p",
    "triangular_solve_p",
    "tridiagonal_p",
    "tridiagonal_solve_p",
)

_installed: dict = {}


def affected(version: str = jaxlib.__version__) -> bool:
    """Whether this jaxlib parallelises batched LAPACK kernels on the intra-op pool."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) < (0, 11)


def _sequential(primitive, original):
    def batcher(axis_data, values, dims, **params):
        if all(d is None for d in dims) or jax.default_backend() != "cpu":
            return original(axis_data, values, dims, **params)
        batched = tuple(
            jax.numpy.moveaxis(v, d, 0) for v, d in zip(values, dims, strict=True) if d is not None
        )

        def one(sliced):
            pieces = iter(sliced)
            args = [v if d is None else next(pieces) for v, d in zip(values, dims, strict=True)]
            return primitive.bind(*args, **params)

        out = jax.lax.map(one, batched)
        return (out, [0] * len(out)) if primitive.multiple_results else (out, 0)

    return batcher


def install(environ=os.environ, version: str = jaxlib.__version__) -> bool:
    """Map batched LAPACK kernels one matrix at a time (see the module docstring).

    Returns whether the rules are (now) replaced. Idempotent.
    """
    if _installed:
        return True
    if environ.get(KEEP_VARIABLE) or not affected(version):
        return False
    for name in LAPACK_PRIMITIVES:
        primitive = getattr(linalg, name, None)
        original = batching.fancy_primitive_batchers.get(primitive) if primitive else None
        if original is None:
            continue
        _installed[primitive] = original
        batching.fancy_primitive_batchers[primitive] = _sequential(primitive, original)
    jax.clear_caches()  # batched jaxprs traced before (e.g. of jnp.linalg's jitted helpers)
    return True


def uninstall() -> None:
    """Restore JAX's own batching rules (for tests)."""
    for primitive, original in _installed.items():
        batching.fancy_primitive_batchers[primitive] = original
    _installed.clear()
    jax.clear_caches()
