"""A trained learned kernel, detached from any model, and how a step reuses, saves and loads it.

What L2HMC (Levy et al. 2018) and the proposal-entropy sampler (Li et al. 2021) learn in
warm-up is the same kind of thing: networks (with the learned log step size among their
leaves), the whitening x = c + S y they were trained in, and the parameter layout of the
model they belong to. This module holds that once:

* ``TrainedKernel``: the frozen dataclass (``TrainedL2HMC`` and ``TrainedEntropyFlow`` are
  its two kinds);
* ``check_trained``: refuses a kernel no chain could move with (a step size that is not
  finite, positive and at most ``validation.MAX_STEP_SIZE``; an inverse mass that is not
  positive (definite); a non-finite centre or β);
* ``TrainedKernelStep``: the mixin that gives a step class ``from_trained``, ``save``,
  ``load`` and the end-of-warm-up hook ``_tuned`` (keep what was learned; warn when
  training failed or never ran). A method fills in what its networks look like on disk.
* ``json_float``: a float for JSON (None for NaN or infinity);
* ``TrainedNNgHMC``: what NNgHMC (Li et al. 2019) learns -- a gradient surrogate and the
  warm-up's step size, mass matrix and path length -- with ``check_trained_nnghmc``,
  ``save_nnghmc`` and ``read_nnghmc`` (its own file layout, older than the kernels').

The files are ``io.py``'s (arrays + JSON, no pickle).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps.surrogate import GradientSurrogate, SurrogateSpec, make_surrogate
from pymc_neural_steps.target import Layout, LayoutMismatchError
from pymc_neural_steps.validation import (
    InvalidSettingError,
    check_finite_arrays,
    check_inverse_mass,
    check_positive,
    check_step_size,
)

__all__ = [
    "TrainedEntropyFlow",
    "TrainedKernel",
    "TrainedKernelStep",
    "TrainedL2HMC",
    "TrainedNNgHMC",
    "TrainedTransport",
    "check_trained",
    "check_trained_nnghmc",
    "json_float",
    "read_nnghmc",
    "save_nnghmc",
]


def json_float(x) -> float | None:
    """``x`` as a float for JSON: None when it is NaN or infinite (JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class TrainedKernel:
    """A trained kernel, detached from any model: the networks, the whitening they were
    trained in, and the model layout they belong to. A step's ``save`` writes it
    (``io.py``); its ``load`` / ``from_trained`` sample with it."""

    networks: Any  # the method's networks (an equinox module), numpy leaves
    center: np.ndarray
    inverse_mass: np.ndarray  # (d,) diagonal or (d, d) dense
    layout: dict  # Layout.fingerprint() of the model it was trained on
    options: dict  # the settings it was trained with (network shape, jitter, ...)
    report: dict = field(default_factory=dict)  # training steps, rollbacks, final loss

    @property
    def step_size(self) -> float:
        return float(np.exp(self.networks.log_step_size))


@dataclass(frozen=True)
class TrainedL2HMC(TrainedKernel):
    """A trained L2HMC kernel (``kernels.l2hmc.L2HMCNetworks``)."""


@dataclass(frozen=True)
class TrainedTransport(TrainedKernel):
    """A trained transport map (``kernels.transport.TransportMap``, with the latent HMC's
    log step size among its leaves)."""


@dataclass(frozen=True)
class TrainedEntropyFlow(TrainedKernel):
    """A trained flow kernel (``kernels.entropy.FlowNetworks``) and its entropy weight β."""

    beta: float = 1.0


def check_trained(trained: TrainedKernel, dim: int) -> None:
    """Refuse (``InvalidSettingError``) a trained kernel, hand-made or read from disk, that
    no chain could move with. The networks themselves are not checked here: ``io.py``
    refuses non-finite arrays on disk, and a broken network only gets its proposals
    rejected."""
    with np.errstate(over="ignore"):
        step_size = float(np.exp(np.asarray(trained.networks.log_step_size, np.float64)))
    check_step_size(step_size, name="the trained step_size (exp of log_step_size)")
    check_inverse_mass(trained.inverse_mass, dim, name="the trained inverse_mass")
    center = np.asarray(trained.center, np.float64)
    if center.shape != (dim,):
        raise InvalidSettingError(f"the trained center has shape {center.shape}; expected ({dim},)")
    check_finite_arrays({"center": center}, what="the trained kernel")
    if isinstance(trained, TrainedEntropyFlow):
        check_positive("the trained beta", trained.beta)


class TrainedKernelStep:
    """``from_trained``, ``save``, ``load`` and ``_tuned`` for a step that learns a kernel.

    Mixed into a ``NeuralStep`` subclass, which sets the class attributes below, holds
    ``options``, ``layout``, ``trained`` and ``_trained_start``, and implements
    ``_save_metadata`` / ``_load_template``.
    """

    kind: ClassVar[str]  # io's kind, and the name in messages
    trained_class: ClassVar[type[TrainedKernel]]
    kernel_options: ClassVar[frozenset[str]]  # settings that describe the kernel and travel
    loss_name: ClassVar[str] = "loss"  # what training minimises, for messages
    untrained_kernel: ClassVar[str]  # what the untrained kernel is, for messages

    # --- what a method supplies ------------------------------------------------------------
    def _save_metadata(self, trained: TrainedKernel) -> dict:
        """The JSON that describes ``trained``'s networks (besides options and report)."""
        raise NotImplementedError

    @classmethod
    def _load_template(cls, metadata: dict) -> tuple[Any, bool, dict]:
        """(networks template, dense whitening?, extra TrainedKernel fields) from the JSON."""
        raise NotImplementedError

    def _trained_fields(self, training, carry, batched: bool) -> tuple[dict, dict]:
        """(extra TrainedKernel fields, extra report entries) at the end of warm-up."""
        return {}, {}

    # --- the end of warm-up ------------------------------------------------------------------
    def _tuned(self, carry: Any, *, batched: bool) -> None:
        training = jax.device_get(carry.training)
        started = getattr(carry, "started", None)
        if batched:  # one kernel for all chains: every chain holds it; take the first
            training = jax.tree.map(lambda a: a[0], training)
        steps, rejected = int(training.num_steps), int(training.num_rejected)
        if steps and rejected == steps:
            warnings.warn(
                f"{self.kind}: all {steps} training steps gave a non-finite {self.loss_name} "
                "or gradient and were rolled back; the kernel is the untrained one "
                f"({self.untrained_kernel}). The draws are exact either way. Try a smaller "
                "learning_rate.",
                UserWarning,
                stacklevel=2,
            )
        if self._trained_start is not None:
            self.trained = self._trained_start
            return
        if started is not None and not np.asarray(jax.device_get(started)).all():
            warnings.warn(
                f"{self.kind} was not trained: there was no warm-up (tune=0), so the chain "
                "samples untrained, as plain HMC with the initial settings (the initial "
                "step size, a unit mass matrix). The draws are exact but slow. Use "
                f"tune >= hmc_warmup (= {self.options['hmc_warmup']}) to train, or "
                f"{self.kind}.load / from_trained to sample with a trained kernel.",
                UserWarning,
                stacklevel=2,
            )
            self.trained = None
            return
        gate_report = self._warn_if_gated(carry, batched)
        fields, report = self._trained_fields(training, carry, batched)
        self.trained = self.trained_class(
            networks=jax.tree.map(np.asarray, training.params),
            center=np.asarray(training.context.center),
            inverse_mass=np.asarray(training.context.inverse_mass),
            layout=self.layout.fingerprint(),
            options=dict(self.options),
            report={
                "train_steps": steps,
                "rollbacks": rejected,
                "final_loss": json_float(training.loss),
                **gate_report,
                **report,
            },
            **fields,
        )

    def _warn_if_gated(self, carry: Any, batched: bool) -> dict:
        """The gate's figures (``programs/gate.py``) for the report, and a warning for
        every chain it sent back to HMC."""
        gate = getattr(carry, "gate", None)
        if gate is None:
            return {}
        gate = jax.device_get(gate)
        decided = np.atleast_1d(gate.decided)
        use = np.atleast_1d(gate.use_learned)
        learned, hmc = np.atleast_1d(gate.learned_score), np.atleast_1d(gate.hmc_score)
        resolved = np.atleast_1d(gate.learned_resolved)
        rejected = decided & ~use
        if rejected.any():
            i = int(np.flatnonzero(rejected)[0])
            which = "every chain" if batched or rejected.size == 1 else f"{rejected.sum()} chains"
            why = (
                f"{learned[i]:.3g} ESS per true gradient in its slowest direction against "
                f"HMC's {hmc[i]:.3g}"
                if resolved[i]
                else "its autocorrelation did not die out within the pilot, so its ESS "
                f"per true gradient is at most {learned[i]:.3g}, against HMC's {hmc[i]:.3g}"
            )
            warnings.warn(
                f"{self.kind}: the trained kernel mixed worse than true-gradient HMC on "
                f"pilots from the same walkers: {why}. So {which} drew with HMC, tuned "
                "over the whole warm-up as JaxHMC would be. The draws are exact; their cost "
                "is HMC's. A longer tune or train_steps may let the kernel win.",
                UserWarning,
                stacklevel=3,
            )
        return {
            "gate_learned_ess_per_grad": json_float(learned[0]),
            "gate_hmc_ess_per_grad": json_float(hmc[0]),
            "gate_use_learned": bool(use[0]),
            "transitions_per_draw": int(np.atleast_1d(gate.transitions)[0]) if use[0] else 1,
        }

    # --- reuse, save and load --------------------------------------------------------------
    @classmethod
    def from_trained(cls, source, vars=None, *, model=None, **options):  # noqa: A002
        """A step for ``model`` that samples with ``source``'s trained kernel, untrained.

        ``source`` is a step of this class (its ``trained`` kernel) or a trained kernel.
        ``model`` must have the parameter layout the kernel was trained on (names, shapes,
        transforms; ``LayoutMismatchError`` names the first variable that differs). The
        kernel stays exact on any such model; it is efficient if the posterior is alike.
        Warm-up iterations run the loaded kernel unchanged (no adaptation, no training).
        ``options`` override the kernel's own settings.
        """
        trained = source
        if isinstance(source, TrainedKernelStep):
            trained = source.trained or source._trained_start
        if trained is None:
            raise ValueError(
                f"This {cls.kind} step holds no trained kernel: it has not finished a warm-up "
                "in this process (pm.sample with cores=1, or pymc_neural_steps.sample), nor "
                "was it loaded."
            )
        settings = {k: v for k, v in trained.options.items() if k in cls.kernel_options}
        settings.update(options)
        step = cls(vars, model=model, **settings)
        step.layout.check_compatible(trained.layout, what="the model the kernel was trained on")
        check_trained(trained, int(trained.layout["dim"]))
        step._trained_start = trained
        return step

    def save(self, path) -> None:
        """Write the trained kernel to directory ``path`` (``io.py``: arrays + JSON)."""
        from pymc_neural_steps import io

        trained = self.trained or self._trained_start
        if trained is None:
            raise ValueError(
                f"Nothing to save: this {self.kind} step has not finished a warm-up in this "
                "process."
            )
        io.save_kernel(
            path,
            kind=self.kind,
            arrays={
                "networks": trained.networks,
                "center": trained.center,
                "inverse_mass": trained.inverse_mass,
            },
            layout=trained.layout,
            metadata={
                **self._save_metadata(trained),
                "options": trained.options,
                "report": trained.report,
            },
        )

    @classmethod
    def load(cls, path, vars=None, *, model=None, **options):  # noqa: A002
        """A step for ``model`` from a directory written by ``save`` (no code is run).

        Refused with ``LayoutMismatchError`` naming the variable if ``model``'s layout
        differs from the saved one, with ``InvalidSettingError`` if the saved step size or
        whitening is unusable; otherwise as ``from_trained``.
        """
        from pymc_neural_steps import io

        _, metadata = io.read_for_model(path, cls.kind, model, vars)
        template, dense, fields = cls._load_template(metadata)
        dim = int(metadata["network"]["dim"])
        arrays = io.load_arrays(
            path,
            {
                "networks": template,
                "center": np.zeros(dim),
                "inverse_mass": np.zeros((dim, dim) if dense else dim),
            },
            metadata,
        )
        trained = cls.trained_class(
            networks=jax.tree.map(np.asarray, arrays["networks"]),
            center=np.asarray(arrays["center"]),
            inverse_mass=np.asarray(arrays["inverse_mass"]),
            layout=metadata["layout"],
            options=dict(metadata.get("options") or {}),
            report=dict(metadata.get("report") or {}),
            **fields,
        )
        return cls.from_trained(trained, vars, model=model, **options)


# --- NNgHMC ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedNNgHMC:
    """What a warm-up learned, detached from any model: enough to sample another model
    with the same parameter layout (``NNgHMC.from_trained``) or to save (``io.py``).

    ``surrogate_leaves`` are the network's and standardisation's arrays in the order of
    ``jax.tree.leaves`` of a surrogate built from ``spec``; ``surrogate`` rebuilds it.
    """

    spec: SurrogateSpec
    surrogate_leaves: tuple[np.ndarray, ...]
    step_size: float
    inverse_mass: np.ndarray
    path_length: float
    layout: dict
    passed: bool = True
    report: dict = field(default_factory=dict)

    @staticmethod
    def structure(spec: SurrogateSpec):
        """(arrays template, non-array part) of a surrogate with this spec."""
        return eqx.partition(make_surrogate(spec, jax.random.key(0)), eqx.is_array)

    @property
    def surrogate(self) -> GradientSurrogate:
        arrays, static = self.structure(self.spec)
        leaves = [jnp.asarray(a) for a in self.surrogate_leaves]
        arrays = jax.tree.unflatten(jax.tree.structure(arrays), leaves)
        return eqx.combine(arrays, static)

    @classmethod
    def from_surrogate(
        cls,
        surrogate: GradientSurrogate,
        *,
        layout: Layout | dict,
        step_size: float,
        inverse_mass=None,
        path_length: float = math.pi / 2,
        passed: bool = True,
        report: dict | None = None,
    ) -> TrainedNNgHMC:
        """Wrap a surrogate made by hand (e.g. ``surrogate.make_surrogate``) for a model."""
        fingerprint = layout.fingerprint() if isinstance(layout, Layout) else dict(layout)
        dim = int(fingerprint["dim"])
        if surrogate.spec.dim != dim:
            raise ValueError(
                f"the surrogate is for dimension {surrogate.spec.dim}, the layout has {dim}"
            )
        arrays = eqx.filter(surrogate, eqx.is_array)
        leaves = tuple(np.asarray(a) for a in jax.tree.leaves(arrays))
        if inverse_mass is None:
            inverse_mass = np.ones(dim)
        inverse_mass = np.asarray(inverse_mass, np.float64)
        return cls(
            spec=surrogate.spec,
            surrogate_leaves=leaves,
            step_size=float(step_size),
            inverse_mass=inverse_mass,
            path_length=float(path_length),
            layout=fingerprint,
            passed=passed,
            report=dict(report or {}),
        )


def check_trained_nnghmc(trained: TrainedNNgHMC, dim: int) -> None:
    """Refuse a trained NNgHMC kernel (hand-made or read from disk) of another dimension
    (``LayoutMismatchError``) or one no chain could move with (``InvalidSettingError``)."""
    if trained.spec.dim != dim or np.shape(trained.inverse_mass) != (dim,):
        # Only an inconsistent (e.g. hand-edited) saved kernel gets here.
        raise LayoutMismatchError(
            f"the trained network has shape ({trained.spec.dim},) and the mass matrix "
            f"{np.shape(trained.inverse_mass)}, but the model's parameter vector has "
            f"shape ({dim},)"
        )
    check_step_size(trained.step_size, name="the trained step_size")
    check_positive("the trained path_length", trained.path_length)
    check_inverse_mass(trained.inverse_mass, dim, name="the trained inverse_mass")
    # Weights are checked where they are read from disk (io.load_arrays); a hand-made
    # broken network stays usable, since the MH test keeps it exact (it never moves).


def save_nnghmc(path, trained: TrainedNNgHMC, options: dict) -> None:
    """Write ``trained`` and the step's ``options`` to directory ``path`` (``io.py``)."""
    from pymc_neural_steps import io

    arrays, _ = TrainedNNgHMC.structure(trained.spec)
    arrays = jax.tree.unflatten(jax.tree.structure(arrays), list(trained.surrogate_leaves))
    io.save_kernel(
        path,
        kind="NNgHMC",
        arrays={"surrogate": arrays, "inverse_mass": trained.inverse_mass},
        layout=trained.layout,
        metadata={
            "surrogate_spec": trained.spec.to_json(),
            "step_size": trained.step_size,
            "path_length": trained.path_length,
            "passed": trained.passed,
            "report": trained.report,
            "options": options,
        },
    )


def read_nnghmc(path, model, vars) -> tuple[TrainedNNgHMC, dict]:  # noqa: A002
    """(trained kernel, saved options) from a directory written by ``save_nnghmc``,
    refused with ``LayoutMismatchError`` if ``model``'s layout differs from the saved one."""
    from pymc_neural_steps import io

    _, metadata = io.read_for_model(path, "NNgHMC", model, vars)
    spec = SurrogateSpec.from_json(metadata["surrogate_spec"])
    template, _ = TrainedNNgHMC.structure(spec)
    arrays = io.load_arrays(
        path, {"surrogate": template, "inverse_mass": np.zeros(spec.dim)}, metadata
    )
    trained = TrainedNNgHMC(
        spec=spec,
        surrogate_leaves=tuple(np.asarray(a) for a in jax.tree.leaves(arrays["surrogate"])),
        step_size=float(metadata["step_size"]),
        inverse_mass=np.asarray(arrays["inverse_mass"]),
        path_length=float(metadata["path_length"]),
        layout=metadata["layout"],
        passed=bool(metadata["passed"]),
        report=dict(metadata.get("report") or {}),
    )
    return trained, dict(metadata.get("options") or {})
