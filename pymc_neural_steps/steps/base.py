"""What every step method of this package shares: the PyMC contract around a JAX program.

A method is written once, as a ``ChainProgram`` of pure JAX functions of one chain's carry
(its kernel state plus every adapted or learned quantity; ``programs/base.py``). Two
drivers run it:

* ``NeuralStep.step`` -- PyMC's per-draw loop (``pm.sample(step=...)``), one chain per
  instance, the carry kept in the step's sampling state so that every chain starts from
  the same untuned state (PyMC restores ``sampling_state`` between sequential chains);
* ``pymc_neural_steps.sample`` -- all chains at once, vmapped, in jitted ``lax.scan``
  chunks (``sampling.py``), using the step through ``model``, ``chain_program()`` and
  ``finish_warmup()`` only.

Randomness: each chain has one integer seed, drawn from the generator PyMC hands over
(``setup_chain`` on PyMC 6, ``set_rng`` on PyMC 5); the key of iteration i is
``programs.base.iteration_key(seed, i)``, so a chain's draws depend on its seed alone, not
on how the iterations are split into calls or processes.

Compilation is lazy: nothing is traced or jitted in ``__init__``, and compiled functions
are dropped on pickling, because PyMC pickles step methods into worker processes and JAX
does not survive a ``fork`` after it has started threads.
"""

from __future__ import annotations

import time
from dataclasses import field
from typing import Any, ClassVar

import jax
import numpy as np
import pymc as pm
from pymc.step_methods.compound import BlockedStep, Competence, StepMethodState
from pymc.step_methods.state import dataclass_state
from pymc.util import get_random_generator, get_value_vars_from_user_vars

from pymc_neural_steps.adaptation import window_code
from pymc_neural_steps.programs.base import (  # noqa: F401 -- re-exported (old paths)
    COMMON_STATS, DEFAULT_MODE, TRAINING_TIME_STAT, ChainProgram, StatSpec, iteration_key,
    pack_stats, training_key,
)
from pymc_neural_steps.steps._host import (
    progressbar_config, progressbar_update_functions, refuse_unsafe_fork,
)
from pymc_neural_steps.target import Target, build_target, data_fingerprint

__all__ = [
    "COMMON_STATS", "DEFAULT_MODE", "TRAINING_TIME_STAT", "ChainProgram", "NeuralStep",
    "NeuralStepState", "StatSpec", "iteration_key", "pack_stats",
]


@dataclass_state
class NeuralStepState(StepMethodState):
    tune: bool
    iteration: int
    num_tune: int | None
    seed: int
    mode: str
    carry: Any = field(default=None)


class NeuralStep(BlockedStep):
    """Base PyMC step method: converts points, drives a ``ChainProgram``, records stats.

    Subclasses implement ``_program(target) -> ChainProgram`` and declare their extra stats
    in ``extra_stats`` (after ``COMMON_STATS``).
    """

    name: ClassVar[str] = "neural_step"
    default_blocked = True
    _state_class = NeuralStepState
    extra_stats: ClassVar[tuple[StatSpec, ...]] = ()
    # Filled per subclass by __init_subclass__ for PyMC's trace.
    stats_dtypes_shapes: ClassVar[dict[str, tuple[type, list]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.stats_dtypes_shapes = {s.name: (s.dtype, []) for s in cls.stat_specs()}

    @classmethod
    def stat_specs(cls) -> tuple[StatSpec, ...]:
        return COMMON_STATS + cls.extra_stats

    def __init__(
        self,
        vars=None,  # noqa: A002 -- PyMC's name
        *,
        model=None,
        rng=None,
        initial_point: dict | None = None,
        blocked: bool = True,
    ):
        model = pm.modelcontext(model)
        if vars is None:
            vars = model.continuous_value_vars
        else:
            vars = get_value_vars_from_user_vars(vars, model)
        self.vars = list(vars)
        self._model = model
        self._initial_point = initial_point
        self.blocked = blocked
        self.rng = get_random_generator(rng)
        self.seed = int(self.rng.integers(2**62))
        self.tune = True
        self.iteration = 0
        self.num_tune = None
        self.mode = DEFAULT_MODE
        self.carry = None
        # Wall seconds spent in training runs by this object (all chains it ran, both drivers).
        self.training_time = 0.0
        self._pending_training_time = 0.0
        self._compiled: dict[str, Any] | None = None

    # --- PyMC contract -----------------------------------------------------------------
    @staticmethod
    def competence(var, has_grad):
        if var.dtype.startswith(("float", "complex")) and has_grad:
            return Competence.PREFERRED
        return Competence.INCOMPATIBLE

    def set_rng(self, rng):  # PyMC 5
        self.rng = get_random_generator(rng, copy=False)
        self.seed = int(self.rng.integers(2**62))

    def setup_chain(self, rng, tune: int, draws: int) -> None:  # PyMC 6
        self.set_rng(rng)
        self.num_tune = int(tune)
        self.reset_tuning()

    def reset_tuning(self):
        """Start a chain afresh: untuned, nothing learned."""
        self.iteration = 0
        self.carry = None
        self.mode = DEFAULT_MODE
        self.tune = True
        self._pending_training_time = 0.0

    def stop_tuning(self):
        if self.tune and self.carry is not None:
            self._end_tune()
        self.tune = False

    def _train(self, fns) -> None:
        start = time.perf_counter()
        self.carry = jax.block_until_ready(fns["train"](self.seed, self.iteration, self.carry))
        elapsed = time.perf_counter() - start
        self.training_time += elapsed
        self._pending_training_time += elapsed

    def _end_tune(self):
        fns = self._functions()
        pending = fns["program"].train_pending
        while pending is not None and pending(self.carry):
            self._train(fns)
        self.carry = fns["end_tune"](self.carry)
        self._update_mode()
        self._tuned(self.carry, batched=False)

    def _tuned(self, carry, *, batched: bool) -> None:
        """Host-side hook, called by both drivers when warm-up ends, with the final carry.

        ``batched``: the carry holds every chain (leading axis; the fast driver) rather than
        one chain (``pm.sample``). Methods that learn override it to keep what was learned
        and to warn when learning failed.
        """

    # --- the driver's interface (``sampling.py``) ------------------------------------------
    @property
    def model(self) -> pm.Model:
        """The model this step was created for."""
        return self._model

    def chain_program(self) -> tuple[Target, ChainProgram]:
        """(target, program) for the model's current data, freshly built (not compiled)."""
        target = self._build_target()
        return target, self._program(target)

    def finish_warmup(self, carry, *, batched: bool = True, training_time: float = 0.0) -> None:
        """Tell the step that warm-up ended with ``carry`` (every chain's when ``batched``)
        and spent ``training_time`` wall seconds training: it keeps what was learned."""
        self.training_time += training_time
        self._tuned(carry, batched=batched)

    def _update_mode(self):
        mode_of = self._functions()["program"].mode_of
        self.mode = DEFAULT_MODE if mode_of is None else mode_of(self.carry)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_compiled"] = None
        return state

    # --- compilation ---------------------------------------------------------------------
    def _program(self, target: Target) -> ChainProgram:
        raise NotImplementedError

    def _build_target(self) -> Target:
        return build_target(self._model, self.vars, initial_point=self._initial_point)

    def _drop_stale_functions(self) -> None:
        """Forget the compiled functions if the model's data changed since they froze it
        (``pm.set_data`` between two ``pm.sample`` calls with the same step object). What
        the step learned is kept: only the log density must never be stale."""
        if self._compiled is not None:
            if self._compiled["target"].data_key != data_fingerprint(self._model):
                self._compiled = None

    def _functions(self) -> dict[str, Any]:
        if self._compiled is None:
            refuse_unsafe_fork()
            target, program = self.chain_program()

            def tune(seed, iteration, carry, position, code, extras, mode):
                carry = program.refresh(carry, position, extras)
                return program.tune(iteration_key(seed, iteration), carry, code, extras, mode)

            def draw(seed, iteration, carry, position, extras, mode):
                carry = program.refresh(carry, position, extras)
                return program.draw(iteration_key(seed, iteration), carry, extras, mode)

            def train(seed, iteration, carry):
                # Training draws its randomness from a stream apart from the transitions'.
                return program.train(training_key(seed, iteration), carry)

            # The carry is donated: a learning method's carry holds megabytes of training
            # data, which would otherwise be copied on every draw. ``self.carry`` is its only
            # holder (PyMC's sampling state is copied before the first draw, while it is None).
            self._compiled = {
                "target": target,
                "program": program,
                "init": jax.jit(program.init),
                "tune": jax.jit(tune, static_argnames="mode", donate_argnames="carry"),
                "draw": jax.jit(draw, static_argnames="mode", donate_argnames="carry"),
                "end_tune": jax.jit(program.end_tune, donate_argnums=0),
                "train": None if program.train is None else jax.jit(train, donate_argnames="carry"),
            }
        return self._compiled

    @property
    def target(self) -> Target:
        return self._functions()["target"]

    # --- one draw ------------------------------------------------------------------------
    def step(self, point):
        if self.carry is None:  # a chain starts: the data may have changed since the last
            self._drop_stale_functions()
        fns = self._functions()
        layout = fns["target"].layout
        position = layout.ravel(point)
        extras = tuple(np.asarray(point[name]) for name in layout.extra_names)
        if self.carry is None:
            fns["target"].check_initial_point(position, extras)
            self.carry = fns["init"](position, extras)
            self._update_mode()
            if not self.tune:  # tune=0: sample with the initial settings
                self._end_tune()

        if self.tune:
            code = window_code(self.iteration, self.num_tune)
            out = fns["tune"](
                self.seed, self.iteration, self.carry, position, code, extras, mode=self.mode
            )
        else:
            out = fns["draw"](
                self.seed, self.iteration, self.carry, position, extras, mode=self.mode
            )
        self.carry, new_position, packed = out
        new_position, packed = np.asarray(new_position), np.asarray(packed)
        stats = {
            spec.name: spec.dtype(value)
            for spec, value in zip(self.stat_specs(), packed, strict=True)
        }
        if TRAINING_TIME_STAT in stats:
            stats[TRAINING_TIME_STAT] = float(self._pending_training_time)
        self._pending_training_time = 0.0

        program = fns["program"]
        if (
            self.tune
            and program.train_at is not None
            and program.train_at(self.iteration, self.num_tune)
            and not (program.done_training is not None and program.done_training(self.carry))
        ):
            self._train(fns)
            self._update_mode()
        self.iteration += 1

        new_point = dict(point)
        new_point.update(layout.unravel(new_position))
        return new_point, [stats]

    # --- progress bar (PyMC's hooks) -------------------------------------------------------
    _progressbar_config = staticmethod(progressbar_config)
    _make_progressbar_update_functions = staticmethod(progressbar_update_functions)
