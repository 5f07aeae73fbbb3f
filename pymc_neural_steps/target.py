"""The PyMC -> JAX bridge: a model's posterior as a JAX target on one flat vector.

Every sampler in this package works on the unconstrained, raveled parameter vector
``x in R^d`` (PyMC's value variables after their transforms, Jacobian terms included;
``../shared/docs/algorithms.md``, "Notation"). This module is the only one that knows
PyTensor: it turns a ``pm.Model`` into pure JAX functions of ``x``

* ``logdensity``      log p(x), everything the model says (priors, likelihood, potentials);
* ``log_prior``       the free variables' terms with Jacobians (what a prior swap replaces);
* ``log_likelihood``  the observed variables' terms;
* ``log_potential``   ``pm.Potential`` terms;

plus ``ravel``/``unravel`` between flat vectors and PyMC points, the map from ``x`` to the
constrained posterior values and Deterministics, and a layout fingerprint (names, shapes,
transforms) that later code uses to refuse a model whose parameter layout differs.

Value variables that are not sampled by the target (those a compound step leaves to
another step method, e.g. a discrete variable under Metropolis) enter every function as
extra arguments after ``x``, in ``Target.layout.extra_names`` order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax

# PyMC models are float64 throughout; a 32-bit JAX silently breaks the MH test's accuracy.
# A worker started by ``spawn`` imports this module afresh, so setting it here covers it.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pymc as pm  # noqa: E402
import pytensor.tensor as pt  # noqa: E402
from pytensor.compile import SharedVariable  # noqa: E402
from pytensor.compile.mode import JAX as JAX_MODE  # noqa: E402
from pytensor.compile.mode import Mode  # noqa: E402
from pytensor.graph.fg import FunctionGraph  # noqa: E402
from pytensor.graph.replace import clone_replace  # noqa: E402
from pytensor.graph.traversal import graph_inputs  # noqa: E402
from pytensor.link.jax.dispatch import jax_funcify  # noqa: E402
from pytensor.raise_op import Assert  # noqa: E402
from pytensor.tensor.random.type import RandomType  # noqa: E402

from pymc.logprob.utils import CheckParameterValue  # noqa: E402

__all__ = [
    "DiscreteVariableError",
    "Layout",
    "LayoutMismatchError",
    "NonFiniteInitialPointError",
    "Target",
    "VariableLayout",
    "build_layout",
    "build_target",
    "data_fingerprint",
]


class DiscreteVariableError(TypeError):
    """The variables asked of a gradient-based target include discrete ones."""


class LayoutMismatchError(ValueError):
    """Two models (or a model and a saved kernel) do not share a parameter layout."""


class NonFiniteInitialPointError(ValueError):
    """The log density is not finite at the point where sampling would start."""


@jax_funcify.register(Assert)
@jax_funcify.register(CheckParameterValue)
def _jax_funcify_passthrough_check(op, **kwargs):
    # XLA cannot raise from inside compiled code. Parameter checks that PyMC can express
    # as -inf were already rewritten into switches (see ``_jaxify``); what is left are
    # shape/consistency assertions that hold for every valid input.
    def passthrough(value, *conditions):
        return value

    return passthrough


@dataclass(frozen=True)
class VariableLayout:
    """Where one value variable lives in the flat vector, and what it is."""

    name: str
    rv_name: str
    shape: tuple[int, ...]
    start: int
    transform: str | None

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Layout:
    """The flat parameter vector's layout: the sampled variables in order."""

    variables: tuple[VariableLayout, ...]
    extra_names: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return sum(v.size for v in self.variables)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-serialisable description; two targets with equal fingerprints match."""
        return {
            "variables": [
                {"name": v.name, "shape": list(v.shape), "transform": v.transform}
                for v in self.variables
            ],
            "dim": self.dim,
        }

    def check_compatible(self, other: Layout | dict, *, what: str = "the other model") -> None:
        """Raise ``LayoutMismatchError`` naming the first variable that differs."""
        mine = self.fingerprint()["variables"]
        theirs = (other.fingerprint() if isinstance(other, Layout) else other)["variables"]
        mine_by_name = {v["name"]: v for v in mine}
        theirs_by_name = {v["name"]: v for v in theirs}
        for name in mine_by_name:
            if name not in theirs_by_name:
                raise LayoutMismatchError(f"variable {name!r} is missing from {what}")
        for name in theirs_by_name:
            if name not in mine_by_name:
                raise LayoutMismatchError(f"{what} has a variable {name!r} this one does not")
        for a, b in zip(mine, theirs, strict=True):
            if a["name"] != b["name"]:
                raise LayoutMismatchError(
                    f"variables are in a different order: {a['name']!r} here, "
                    f"{b['name']!r} in {what}"
                )
            if a["shape"] != b["shape"]:
                raise LayoutMismatchError(
                    f"variable {a['name']!r} has shape {tuple(a['shape'])} here but "
                    f"{tuple(b['shape'])} in {what}"
                )
            if a["transform"] != b["transform"]:
                raise LayoutMismatchError(
                    f"variable {a['name']!r} has transform {a['transform']!r} here but "
                    f"{b['transform']!r} in {what}"
                )

    def ravel(self, point: dict[str, Any]) -> np.ndarray:
        """Flatten a PyMC point (value-variable names -> arrays) to the vector x."""
        parts = [np.asarray(point[v.name], dtype=np.float64).reshape(-1) for v in self.variables]
        return np.concatenate(parts) if parts else np.zeros(0)

    def unravel(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The inverse of ``ravel`` (numpy; leading batch axes are kept)."""
        x = np.asarray(x)
        batch = x.shape[:-1]
        return {v.name: x[..., v.start : v.stop].reshape(batch + v.shape) for v in self.variables}

    def unravel_jax(self, x: jax.Array) -> dict[str, jax.Array]:
        batch = x.shape[:-1]
        return {v.name: x[..., v.start : v.stop].reshape(batch + v.shape) for v in self.variables}

    def flat_names(self) -> list[str]:
        """One label per coordinate of x, e.g. ``sigma_log__[2]``."""
        labels = []
        for v in self.variables:
            if v.shape == ():
                labels.append(v.name)
            else:
                labels.extend(f"{v.name}{list(idx)}" for idx in np.ndindex(*v.shape))
        return labels

    def to_json(self) -> str:
        return json.dumps(self.fingerprint(), sort_keys=True)


@dataclass(frozen=True)
class Target:
    """A posterior as JAX functions of the flat vector ``x`` (and any extra inputs)."""

    layout: Layout
    logdensity: Callable[..., jax.Array]
    log_prior: Callable[..., jax.Array]
    log_likelihood: Callable[..., jax.Array]
    log_potential: Callable[..., jax.Array]
    # x -> {posterior variable name: constrained value}, free RVs and Deterministics
    constrained: Callable[..., dict[str, jax.Array]]
    constrained_names: tuple[str, ...]
    initial_position: np.ndarray
    initial_extras: tuple[np.ndarray, ...]
    # (x, extras) -> {model term name: its log density}, for error messages only
    term_logps: Callable[..., dict[str, float]] | None = None
    # (x, extras) -> (log prior, log likelihood, log potential) from ONE graph evaluation;
    # ``logdensity`` is their sum in this order. For methods that need the parts and their
    # gradients separately without evaluating an expensive likelihood twice (NNgHMC).
    density_terms: Callable[..., tuple[jax.Array, jax.Array, jax.Array]] | None = None
    # ``data_fingerprint`` of the model when the functions froze its data.
    data_key: str = ""

    @property
    def dim(self) -> int:
        return self.layout.dim

    def logdensity_and_grad(self, x, *extras):
        return jax.value_and_grad(self.logdensity)(x, *extras)

    def check_initial_point(self, x: np.ndarray | None = None, extras=None) -> None:
        """Raise ``NonFiniteInitialPointError`` naming the variables at fault."""
        x = self.initial_position if x is None else np.asarray(x, dtype=np.float64)
        extras = self.initial_extras if extras is None else tuple(extras)
        value, grad = jax.jit(self.logdensity_and_grad)(x, *extras)
        value, grad = float(value), np.asarray(grad)
        if np.isfinite(value) and np.all(np.isfinite(grad)):
            return
        bad = [
            v.name
            for v in self.layout.variables
            if not np.all(np.isfinite(x[v.start : v.stop]))
            or not np.all(np.isfinite(grad[v.start : v.stop]))
        ]
        if self.term_logps is not None:
            terms = self.term_logps(x, *extras)
            bad += [name for name, lp in terms.items() if not np.isfinite(lp) and name not in bad]
        what = "log density" if not np.isfinite(value) else "gradient of the log density"
        detail = (
            f"the terms or values of {', '.join(repr(b) for b in bad)} are not finite"
            if bad
            else "no single variable is at fault"
        )
        raise NonFiniteInitialPointError(
            f"The {what} is not finite at the initial point ({value=}): {detail}. "
            "Check the initial values (initvals) and the priors' supports; "
            "model.debug() and model.point_logps() show which term is at fault."
        )


def data_fingerprint(model: pm.Model) -> str:
    """A digest of the current values of the model's shared variables (``pm.Data`` and
    mutable dimension lengths): it changes whenever ``pm.set_data`` changes what a compiled
    target has frozen, so a step can tell that its compiled functions are stale."""
    shared = {
        name: v
        for name, v in model.named_vars.items()
        if isinstance(v, SharedVariable) and not isinstance(v.type, RandomType)
    }
    shared.update(
        {f"dim:{name}": v for name, v in model.dim_lengths.items() if isinstance(v, SharedVariable)}
    )
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(shared):
        value = np.ascontiguousarray(shared[name].get_value(borrow=True))
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes() if value.dtype.kind != "O" else repr(value).encode())
    return digest.hexdigest()


def _transform_name(model: pm.Model, value_var) -> str | None:
    transform = model.rvs_to_transforms.get(model.values_to_rvs[value_var])
    return None if transform is None else type(transform).__name__


def _is_discrete(value_var) -> bool:
    return value_var.dtype.startswith(("int", "uint", "bool"))


def _jaxify(inputs: Sequence, outputs: Sequence, check_bounds: bool) -> Callable:
    """Rewrite a PyTensor graph for JAX and return the JAX function (shared vars frozen).

    Random-generator shared variables are left alone: they reach a log-density graph only
    through shape references to random variables, which the rewrites remove.
    """
    shared = [
        v
        for v in graph_inputs(outputs)
        if isinstance(v, SharedVariable) and not isinstance(v.type, RandomType)
    ]
    frozen = {v: pt.constant(v.get_value(borrow=False), name=v.name) for v in shared}
    outputs = clone_replace(list(outputs), replace=frozen)
    fgraph = FunctionGraph(inputs=list(inputs), outputs=outputs, clone=True)
    check_opt = (
        "local_check_parameter_to_ninf_switch" if check_bounds else "local_remove_check_parameter"
    )
    optimizer = Mode(
        linker=JAX_MODE.linker, optimizer=JAX_MODE.provided_optimizer.including(check_opt)
    ).optimizer
    optimizer.rewrite(fgraph)
    return jax_funcify(fgraph)


def _sum_or_zero(terms) -> pt.TensorVariable:
    terms = list(terms)
    if not terms:
        return pt.constant(0.0, dtype="float64")
    return pt.sum([pt.sum(t) for t in terms])


def _sampled_value_vars(model: pm.Model, vars: Sequence | None) -> list:  # noqa: A002
    all_value_vars = list(model.value_vars)
    if vars is None:
        discrete = [v.name for v in all_value_vars if _is_discrete(v)]
        if discrete:
            raise DiscreteVariableError(
                f"The model has discrete free variables {discrete}, which gradient-based "
                "step methods cannot sample. Give this step method only the continuous "
                "variables (vars=...) and let pm.sample assign another step method "
                "(e.g. pm.Metropolis) to the discrete ones."
            )
        value_vars = all_value_vars
    else:
        value_vars = pm.util.get_value_vars_from_user_vars(list(vars), model)
        discrete = [v.name for v in value_vars if _is_discrete(v)]
        if discrete:
            raise DiscreteVariableError(
                f"Variables {discrete} are discrete; gradient-based step methods can only "
                "be assigned continuous variables."
            )
    if not value_vars:
        raise ValueError("No continuous free variables to sample.")
    return value_vars


def build_layout(
    model: pm.Model | None = None,
    vars: Sequence | None = None,  # noqa: A002 -- PyMC's own name for it
    *,
    initial_point: dict[str, np.ndarray] | None = None,
) -> Layout:
    """The ``Layout`` that ``build_target`` would give, without compiling anything.

    Cheap enough to call in a step method's constructor, e.g. to refuse a trained kernel
    for a model whose parameters differ before any sampling starts.
    """
    model = pm.modelcontext(model)
    value_vars = _sampled_value_vars(model, vars)
    if initial_point is None:
        initial_point = model.initial_point()
    variables, start = [], 0
    for v in value_vars:
        shape = tuple(int(s) for s in np.shape(initial_point[v.name]))
        layout_var = VariableLayout(
            name=v.name,
            rv_name=model.values_to_rvs[v].name,
            shape=shape,
            start=start,
            transform=_transform_name(model, v),
        )
        variables.append(layout_var)
        start = layout_var.stop
    extra_vars = [v for v in model.value_vars if v not in value_vars]
    return Layout(tuple(variables), extra_names=tuple(v.name for v in extra_vars))


def build_target(
    model: pm.Model | None = None,
    vars: Sequence | None = None,  # noqa: A002 -- PyMC's own name for it
    *,
    initial_point: dict[str, np.ndarray] | None = None,
) -> Target:
    """Compile ``model`` (or the value variables ``vars`` of it) into a JAX ``Target``.

    Parameters
    ----------
    model
        The PyMC model; the one in context when omitted.
    vars
        Value variables (or their random variables) to sample; all of them when omitted.
        The remaining value variables become extra inputs of every function.
    initial_point
        A PyMC point giving the shapes and the initial position; ``model.initial_point()``
        when omitted.

    Shared variables (``pm.Data``) are read once, here: call again after ``pm.set_data``.
    """
    model = pm.modelcontext(model)
    data_key = data_fingerprint(model)
    value_vars = _sampled_value_vars(model, vars)
    if initial_point is None:
        initial_point = model.initial_point()
    extra_vars = [v for v in model.value_vars if v not in value_vars]
    layout = build_layout(model, vars, initial_point=initial_point)
    variables = layout.variables

    # The flat input replaces each sampled value variable by a reshaped slice of x.
    x = pt.vector("x", dtype="float64")
    replace = {
        v: x[lv.start : lv.stop].reshape(lv.shape).astype(v.dtype)
        for v, lv in zip(value_vars, variables, strict=True)
    }
    extra_inputs = [v.type(name=v.name) for v in extra_vars]
    replace.update(dict(zip(extra_vars, extra_inputs, strict=True)))

    log_prior = model.logp(vars=model.free_RVs, jacobian=True, sum=False)
    log_lik = model.logp(vars=model.observed_RVs, sum=False) if model.observed_RVs else []
    # Potentials are written in terms of random variables; the density needs their values.
    log_pot = model.replace_rvs_by_values(list(model.potentials))
    densities = [_sum_or_zero(log_prior), _sum_or_zero(log_lik), _sum_or_zero(log_pot)]
    densities = clone_replace(densities, replace=replace)
    density_fn = _jaxify([x, *extra_inputs], densities, model.check_bounds)

    def _density_terms(x, *extras):
        prior, lik, pot = density_fn(x, *extras)
        return prior, lik, pot

    def logdensity(x, *extras):
        prior, lik, pot = _density_terms(x, *extras)
        total = prior + lik + pot
        # NaN means "outside the support" for every purpose here; -inf is rejected cleanly.
        return jnp.where(jnp.isnan(total), -jnp.inf, total)

    def log_prior_fn(x, *extras):
        return _density_terms(x, *extras)[0]

    def log_likelihood_fn(x, *extras):
        return _density_terms(x, *extras)[1]

    def log_potential_fn(x, *extras):
        return _density_terms(x, *extras)[2]

    # Constrained values of the free RVs and the Deterministics, as the posterior shows them.
    wanted = {lv.rv_name for lv in variables} | {d.name for d in model.deterministics}
    outputs = [out for out in model.unobserved_value_vars if out.name in wanted]
    constrained_names = tuple(out.name for out in outputs)
    outputs = clone_replace(outputs, replace=replace)
    constrained_fn_raw = _jaxify([x, *extra_inputs], outputs, model.check_bounds)

    def constrained(x, *extras):
        return dict(zip(constrained_names, constrained_fn_raw(x, *extras), strict=True))

    initial_position = layout.ravel(initial_point)
    initial_extras = tuple(np.asarray(initial_point[v.name]) for v in extra_vars)

    def term_logps(x, *extras):
        point = dict(initial_point)
        point.update(layout.unravel(np.asarray(x)))
        point.update({v.name: e for v, e in zip(extra_vars, extras, strict=True)})
        return {name: float(lp) for name, lp in model.point_logps(point).items()}

    return Target(
        layout=layout,
        logdensity=logdensity,
        log_prior=log_prior_fn,
        log_likelihood=log_likelihood_fn,
        log_potential=log_potential_fn,
        constrained=constrained,
        constrained_names=constrained_names,
        initial_position=initial_position,
        initial_extras=initial_extras,
        term_logps=term_logps,
        density_terms=_density_terms,
        data_key=data_key,
    )
