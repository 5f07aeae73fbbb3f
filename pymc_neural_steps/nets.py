"""The small networks the samplers learn: equinox MLPs and the block MLP of NNgHMC.

Networks are equinox modules, i.e. pytrees of arrays: they jit, vmap, differentiate and
serialise (``io.py``) without ceremony. Every constructor can zero the output layer so that
a fresh network outputs exactly 0, which makes each untrained kernel equal to its classical
counterpart (HMC for L2HMC, MALA for the entropy sampler; ``algorithms.md`` §2, §3).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "BlockMLP", "mlp", "zero_output_layer"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}


def zero_output_layer(net: eqx.nn.MLP) -> eqx.nn.MLP:
    """The same MLP with its last layer's weights (and bias) set to zero."""
    last = net.layers[-1]
    net = eqx.tree_at(lambda n: n.layers[-1].weight, net, jnp.zeros_like(last.weight))
    if last.bias is not None:
        net = eqx.tree_at(lambda n: n.layers[-1].bias, net, jnp.zeros_like(last.bias))
    return net


def mlp(
    in_size: int,
    out_size: int,
    width: int,
    depth: int,
    *,
    key: jax.Array,
    activation: str = "relu",
    zero_output: bool = True,
    dtype=jnp.float64,
) -> eqx.nn.MLP:
    """A fully connected network with ``depth`` hidden layers of ``width`` units."""
    net = eqx.nn.MLP(
        in_size,
        out_size,
        width,
        depth,
        activation=ACTIVATIONS[activation],
        dtype=dtype,
        key=key,
    )
    return zero_output_layer(net) if zero_output else net


class BlockMLP(eqx.Module):
    """Disjoint sub-networks, each mapping the whole input to one block of the output.

    NNgHMC's network for high dimension (Li et al. 2019, §5.3: blocks of 25 gradient
    coordinates, one sub-network each). The sub-networks' weights are stacked so that all
    blocks are evaluated in one vectorised call.
    """

    blocks: eqx.nn.MLP  # stacked: every leaf has a leading axis of size num_blocks
    out_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        block_size: int,
        width: int,
        depth: int,
        *,
        key: jax.Array,
        activation: str = "softplus",
        zero_output: bool = False,
        dtype=jnp.float64,
    ):
        num_blocks = -(-out_size // block_size)
        keys = jax.random.split(key, num_blocks)

        def one_block(k):
            return mlp(
                in_size,
                block_size,
                width,
                depth,
                key=k,
                activation=activation,
                zero_output=zero_output,
                dtype=dtype,
            )

        self.blocks = eqx.filter_vmap(one_block)(keys)
        self.out_size = out_size

    def __call__(self, x: jax.Array) -> jax.Array:
        per_block = eqx.filter_vmap(lambda net: net(x))(self.blocks)
        return per_block.reshape(-1)[: self.out_size]
