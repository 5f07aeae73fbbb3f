"""Shared test settings: 64-bit JAX, quiet PyMC, a --runslow switch for long runs."""

import logging
import warnings

import jax
import pytest

jax.config.update("jax_enable_x64", True)
logging.getLogger("pymc").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*BLAS.*")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
