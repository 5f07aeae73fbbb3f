"""What a step needs from its host process under ``pm.sample``: a refusal to run JAX in a
child forked after JAX started (it would hang), and PyMC's progress-bar hooks."""

from __future__ import annotations

import os

__all__ = ["progressbar_config", "progressbar_update_functions", "refuse_unsafe_fork"]


def _jax_backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without the helper
        return False


# Set in a child created by fork(): whether the parent had already started JAX, whose
# thread pools do not survive a fork (JAX then hangs in the child instead of failing).
_FORKED_AFTER_JAX_STARTED = False


def _note_fork() -> None:
    global _FORKED_AFTER_JAX_STARTED
    _FORKED_AFTER_JAX_STARTED = _jax_backends_initialized()


os.register_at_fork(after_in_child=_note_fork)


def refuse_unsafe_fork() -> None:
    if _FORKED_AFTER_JAX_STARTED:
        raise RuntimeError(
            "This process was forked after JAX had started in its parent, and JAX cannot "
            "run in such a process (it would hang). Sample with "
            "pm.sample(..., mp_ctx='forkserver') (PyMC's default on Linux) or "
            "mp_ctx='spawn', or with pymc_neural_steps.sample, which runs all chains in "
            "one process."
        )


def progressbar_config(n_chains=1):
    """PyMC's progress-bar columns for our stats (``BlockedStep._progressbar_config``)."""
    from rich.progress import TextColumn
    from rich.table import Column

    columns = [
        TextColumn("{task.fields[divergences]}", table_column=Column("Divergences", ratio=1)),
        TextColumn("{task.fields[acceptance_rate]:0.2f}", table_column=Column("Accept", ratio=1)),
        TextColumn("{task.fields[n_grad_evals]}", table_column=Column("Grad evals", ratio=1)),
    ]
    stats = {
        "divergences": [0] * n_chains,
        "acceptance_rate": [0.0] * n_chains,
        "n_grad_evals": [0] * n_chains,
    }
    return columns, stats


def progressbar_update_functions():
    def update_stats(stats):
        # PyMC accumulates nothing for us: "divergences" is the current draw's flag.
        return {
            "divergences": int(stats.get("diverging", False)),
            "acceptance_rate": float(stats.get("acceptance_rate", 0.0)),
            "n_grad_evals": int(stats.get("n_grad_evals", 0)),
            "failing": bool(stats.get("diverging", False)),
        }

    return (update_stats,)
