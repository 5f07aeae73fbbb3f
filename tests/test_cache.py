"""The persistent compilation cache: on by default, directory and switch from the environment."""

import os
import subprocess
import sys

import jax

from pymc_neural_steps import _cache


def run_import(env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYMC_NEURAL_STEPS_")}
    env.update(env_extra)
    code = "import pymc_neural_steps, jax; print(jax.config.jax_compilation_cache_dir)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    return out.stdout.strip().splitlines()[-1]


def test_on_by_default_in_the_chosen_directory_and_off_with_one_setting(tmp_path):
    chosen = tmp_path / "cache"
    assert run_import({"PYMC_NEURAL_STEPS_CACHE_DIR": str(chosen)}, tmp_path) == str(chosen)
    assert chosen.is_dir()
    assert run_import({"XDG_CACHE_HOME": str(tmp_path / "xdg")}, tmp_path) == str(
        tmp_path / "xdg" / "pymc_neural_steps" / "jax"
    )
    off = {"PYMC_NEURAL_STEPS_CACHE_DIR": str(chosen), "PYMC_NEURAL_STEPS_COMPILATION_CACHE": "0"}
    assert run_import(off, tmp_path) == "None"


def test_configure_sets_and_clears_the_directory(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        _cache.configure_compilation_cache(tmp_path / "c")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
        _cache.configure_compilation_cache(None)
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
