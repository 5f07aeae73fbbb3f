"""Where the fast driver's chains live: the chain axis split over devices, and over hosts.

Every array of the batched carry has the chain on its leading axis, so ``sample`` can place
that axis on a one-dimensional ``jax.sharding.Mesh`` of devices and let XLA run each
device's share of the chains. The steps that reduce over all chains at once (pooled
training, the pooled end of warm-up) run on one device with every chain's data
(``ChainPlacement.pooled``), so that the draws do not depend on the devices. With several
processes (``jax.distributed.initialize()`` before sampling) the mesh spans every process's
devices: each host runs its share of the chains, and every host gets the whole trace back.

One device (the default on a machine with one) places nothing, so the single-device path
is the plain jitted program.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["CHAIN_AXIS", "ChainPlacement", "choose_devices"]

CHAIN_AXIS = "chains"


def choose_devices(chains: int, devices: int | Sequence | None = None) -> list:
    """The devices the chains are split over, evenly.

    ``devices=None``: every device JAX sees (over all processes); on one process, the
    largest number of them that divides ``chains``. An int: that many of them, in JAX's
    order. A sequence: those devices. Chains that do not split evenly over a requested
    set are an error, as are devices of another process left out of a multi-process run.
    """
    available = jax.devices()
    if devices is None:
        if jax.process_count() > 1:
            return _even(chains, available, "all devices of a multi-process run")
        count = max(k for k in range(1, len(available) + 1) if chains % k == 0)
        return available[:count]
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices}: JAX sees {len(available)} device(s) "
                f"({available[0].platform}); ask for 1 to {len(available)}."
            )
        chosen = available[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices is empty: name at least one device.")
    if jax.process_count() > 1 and {d.process_index for d in chosen} != set(
        range(jax.process_count())
    ):
        raise ValueError(
            "in a multi-process run every process must hold some of the chains: "
            "choose devices from every process (or leave devices=None)."
        )
    return _even(chains, chosen, f"devices={devices!r}")


def _even(chains: int, devices: list, what: str) -> list:
    if chains % len(devices):
        raise ValueError(
            f"{chains} chains do not split evenly over the {len(devices)} devices of {what}; "
            f"use a multiple of {len(devices)} chains, or fewer devices."
        )
    return devices


class ChainPlacement:
    """The chain axis on a mesh of ``devices`` (nothing placed for a single device)."""

    def __init__(self, devices: Sequence):
        self.devices = list(devices)
        self.sharded = len(self.devices) > 1
        self.multi_process = jax.process_count() > 1
        mesh = Mesh(np.array(self.devices), (CHAIN_AXIS,)) if self.sharded else None
        # The carry: chains on axis 0. A chunk's trace: (iteration, chain, ...).
        self.carry = NamedSharding(mesh, PartitionSpec(CHAIN_AXIS)) if mesh else None
        self.trace = NamedSharding(mesh, PartitionSpec(None, CHAIN_AXIS)) if mesh else None
        self.replicated = NamedSharding(mesh, PartitionSpec()) if mesh else None

    @classmethod
    def for_chains(cls, chains: int, devices=None) -> ChainPlacement:
        return cls(choose_devices(chains, devices))

    def jit(self, fn, out: str | tuple, **kwargs):
        """``jax.jit(fn)`` whose outputs keep the chain axis where it belongs.

        ``out`` names each output's layout: ``"carry"`` or ``"trace"``, a tuple of them for
        several outputs, nested as the outputs are.
        """
        if not self.sharded:
            return jax.jit(fn, **kwargs)
        return jax.jit(fn, out_shardings=self._shardings(out), **kwargs)

    def _shardings(self, out):
        if isinstance(out, tuple):
            return tuple(self._shardings(o) for o in out)
        return {"carry": self.carry, "trace": self.trace}[out]

    def put(self, values) -> jax.Array:
        """A host array with chains on axis 0, placed (each process passes all of it)."""
        return self._place(values, self.carry)

    def put_replicated(self, values) -> jax.Array:
        """A host array every device needs whole (iteration numbers, window codes)."""
        return self._place(values, self.replicated)

    def _place(self, values, sharding) -> jax.Array:
        values = np.asarray(values)
        if not self.sharded:
            return jax.numpy.asarray(values)
        return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])

    def pooled(self, fn):
        """``fn`` (jitted for one device) run on the first device with every chain's data,
        its result placed back on the mesh.

        For the steps that reduce over all chains at once (pooled training, the pooled end
        of warm-up): XLA compiles a program for several devices differently from one for a
        single device (on the CPU it may sum long reductions in another order), so running
        these on one device keeps their result, and so the draws, what a single-device run
        gives. With several processes each runs it on its own first device, on the same
        gathered data, and keeps its share of the result.
        """
        if not self.sharded:
            return fn

        def run(*args):
            return self.scatter(fn(*self.gather(args)))

        return run

    def gather(self, tree):
        """Every chain's data on one local device (the first)."""
        first = jax.local_devices()[0]
        if self.multi_process:
            return jax.device_put(self.fetch(tree), first)
        return jax.device_put(tree, first)

    def scatter(self, tree):
        """A tree with chains on axis 0, held whole on a local device, placed on the mesh."""
        if self.multi_process:
            return jax.tree_util.tree_map(self.put, tree)
        return jax.device_put(tree, self.carry)

    def fetch(self, tree):
        """Host copies (NumPy) of every array of ``tree``, from every process's devices."""
        return jax.tree_util.tree_map(_host_copy, tree)

    def is_lead(self) -> bool:
        """Whether this process reports (progress, warnings): the first one."""
        return jax.process_index() == 0

    def describe(self) -> str:
        if not self.sharded:
            return f"1 device ({self.devices[0].platform})"
        hosts = len({d.process_index for d in self.devices})
        where = f" on {hosts} processes" if hosts > 1 else ""
        return f"{len(self.devices)} {self.devices[0].platform} devices{where}"


def _host_copy(leaf):
    """A NumPy copy of ``leaf``; an array spread over several processes is gathered."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)
