"""JAX's persistent compilation cache, on by default for this package's samplers.

Compiling a model's warm-up and draw programs takes seconds to tens of seconds and is the
same every time the same model is sampled again, in a new process too. JAX can keep
compiled programs on disk; importing the package turns that on, in

* ``$PYMC_NEURAL_STEPS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/pymc_neural_steps/jax``
  (``~/.cache/pymc_neural_steps/jax``);
* not at all when ``PYMC_NEURAL_STEPS_COMPILATION_CACHE=0``, or when the user has already
  chosen a cache directory through JAX's own ``jax_compilation_cache_dir`` setting (then
  JAX's choice stands).

``configure_compilation_cache(path)`` changes the directory after import, and
``configure_compilation_cache(None)`` turns the cache off. The cache only ever saves time:
JAX keys each entry by the program and the compiler settings, so a changed model compiles
afresh.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["configure_compilation_cache", "default_cache_dir", "install"]

# Programs compiling faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.1


def default_cache_dir() -> Path:
    explicit = os.environ.get("PYMC_NEURAL_STEPS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pymc_neural_steps" / "jax"


def configure_compilation_cache(path: str | os.PathLike | None) -> None:
    """Keep compiled programs in directory ``path`` (created if needed); None turns it off."""
    if path is None:
        jax.config.update("jax_compilation_cache_dir", None)
    else:
        directory = Path(path).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    _forget_earlier_decision()


def _forget_earlier_decision() -> None:
    # JAX decides once, at the first compilation, whether a cache is used; something
    # compiled before this call would otherwise keep that decision.
    try:
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without it
        pass


def install() -> None:
    """Turn the cache on at import, unless switched off or already chosen by the user."""
    if os.environ.get("PYMC_NEURAL_STEPS_COMPILATION_CACHE", "1").strip().lower() in {"0", "false", "off", "no"}:
        return
    if jax.config.jax_compilation_cache_dir:
        return
    try:
        configure_compilation_cache(default_cache_dir())
    except OSError:  # a read-only home: sample without the cache
        pass
