"""The surrogate network: architecture by dimension, standardisation, JSON spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pymc_neural_steps.nets import BlockMLP
from pymc_neural_steps.surrogate import (
    BLOCK_SIZE,
    BLOCK_THRESHOLD,
    SurrogateSpec,
    default_spec,
    make_surrogate,
)

jax.config.update("jax_enable_x64", True)


def test_one_network_up_to_the_threshold_blocks_above():
    assert default_spec(BLOCK_THRESHOLD).block_size == 0
    spec = default_spec(BLOCK_THRESHOLD + 1)
    assert spec.block_size == BLOCK_SIZE
    surrogate = make_surrogate(default_spec(120), jax.random.key(0))
    assert isinstance(surrogate.net, BlockMLP)
    assert surrogate(jnp.ones(120)).shape == (120,)
    # The paper's defaults: one hidden softplus layer of 50-100 units.
    assert (spec.depth, spec.activation) == (1, "softplus") and 50 <= spec.width <= 100


def test_standardisation_is_applied_on_both_sides():
    surrogate = make_surrogate(default_spec(3), jax.random.key(0))
    x = jnp.array([0.3, -1.0, 2.0])
    ones = jnp.ones(3)
    scaled = surrogate.__class__(surrogate.net, ones, 2 * ones, 5 * ones, 3 * ones, surrogate.spec)
    np.testing.assert_allclose(scaled(x), 5.0 + 3.0 * surrogate.net((x - 1.0) / 2.0))


def test_spec_round_trips_through_json_and_refuses_unknown_settings():
    spec = default_spec(80, width=64, activation="tanh")
    assert SurrogateSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown"):
        SurrogateSpec.from_json({**spec.to_json(), "evil": 1})
    with pytest.raises(ValueError, match="activation"):
        default_spec(3, activation="nope")
