"""``NNgHMC``: HMC whose leapfrog runs on a learned gradient, exact by the MH test.

Li, Holbrook, Shahbaba & Baldi, "Neural network gradient Hamiltonian Monte Carlo" (2019);
``algorithms.md`` §1. The PyMC adapter (options, stats, the end-of-warm-up warnings, prior
swaps, save and load) of ``programs/nnghmc.py``'s program, which holds the algorithm:
true-gradient warm-up recording (x, ∇ℓ(x)), training and assessment on a schedule, then
the surrogate's field. The measurements behind its defaults are in
``docs/design-notes.md`` (NNgHMC).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import jax
import numpy as np

from pymc_neural_steps.programs.base import ChainProgram, StatSpec
from pymc_neural_steps.programs.hmc import HMC_STATS
from pymc_neural_steps.programs.nnghmc import (  # noqa: F401 -- re-exported (old paths)
    FIRST_TRAINING, NNGHMC_STATS, REGION_CHECK, RETRAIN_EVERY, SURROGATE_MODE,
    nnghmc_program, region_check_after, trained_from_carry, trains_after,
)
from pymc_neural_steps.steps._nnghmc_messages import fallback_message
from pymc_neural_steps.steps.base import NeuralStep
from pymc_neural_steps.surrogate import BLOCK_THRESHOLD, DEFAULT_WIDTH, default_spec
from pymc_neural_steps.target import Target, build_layout
from pymc_neural_steps.trained import TrainedNNgHMC, check_trained_nnghmc, read_nnghmc, save_nnghmc
from pymc_neural_steps.validation import (
    check_count,
    check_fraction,
    check_nonnegative,
    check_positive,
    check_step_size,
)

__all__ = ["NNgHMC", "TrainedNNgHMC", "nnghmc_program", "trains_after"]


class NNgHMC(NeuralStep):
    """Neural-network gradient HMC (Li et al. 2019): learn ∇log-likelihood in warm-up,
    then sample with one true log density and no true gradient per draw.

    Exact whatever the network learned: the leapfrog on any field is volume preserving and
    reversible, and every proposal passes an MH test on the model's true log density.

    Parameters
    ----------
    vars
        Value variables to sample (all continuous ones by default).
    target_accept
        Mean acceptance probability that step-size adaptation aims for.
    max_steps
        Cap on leapfrog steps per trajectory (and on a warm-up trajectory's continuation
        to its U-turn).
    step_size
        Initial step size (default 0.25 / d^¼).
    path_length
        Fix λ (integration times uniform on (0, 2λ]) instead of learning it from U-turns.
    buffer_size
        Training pairs kept per chain (default 8192, fewer above d ≈ 256: 32 MiB per chain).
    width, depth, activation, block_size, block_threshold
        The network (``surrogate.py``): ``depth`` hidden layers of ``width`` units; a block
        network with blocks of ``block_size`` outputs (default 25) when d > ``block_threshold``
        (default 50). ``block_size=0`` forces one network.
    train_steps, batch_size, learning_rate
        Adam steps per training run, minibatch size, peak learning rate (default 1e-2;
        why, in ``docs/design-notes.md``).
    assess_trajectories
        Trajectory pairs (true vs surrogate) in each assessment (shared among chains when
        ``pymc_neural_steps.sample`` trains one network for all).
    tolerance
        The surrogate passes when its mean acceptance ≥ the true gradient's − tolerance.
        Once passed, it is checked again at every training point and when warm-up ends,
        at the settings the chains would draw with (the goal: the lower of the true
        gradient's acceptance and the one its step size adapts to); a surrogate that
        fails goes back to the true gradient (and to training, while warm-up lasts).
    first_training, retrain_every
        Training after warm-up iteration ``first_training`` and every ``retrain_every``
        after it, until the surrogate passes; a check at each of them afterwards.
    adapt_mass
        Estimate a diagonal mass matrix during warm-up (Stan's windows).
    model, rng, initial_point
        As for PyMC's own step methods.

    After warm-up, ``step.trained`` holds what was learned (``TrainedNNgHMC``), for
    ``NNgHMC.from_trained`` (a prior swap without retraining), ``step.save(path)`` and
    ``pymc_neural_steps.sensitivity.sensitivity_analysis``. Under ``pm.sample`` with
    ``cores > 1`` chains run in worker processes and ``step.trained`` stays empty in this
    one: use ``cores=1`` or ``pymc_neural_steps.sample`` to keep the trained surrogate.
    """

    name = "nnghmc"
    extra_stats: ClassVar[tuple[StatSpec, ...]] = HMC_STATS + NNGHMC_STATS

    def __init__(
        self,
        vars=None,  # noqa: A002
        *,
        target_accept: float = 0.8,
        max_steps: int = 1024,
        step_size: float | None = None,
        path_length: float | None = None,
        buffer_size: int | None = None,
        width: int = DEFAULT_WIDTH,
        depth: int = 1,
        activation: str = "softplus",
        block_size: int | None = None,
        block_threshold: int = BLOCK_THRESHOLD,
        train_steps: int = 1500,
        batch_size: int = 256,
        learning_rate: float = 1e-2,
        assess_trajectories: int = 32,
        tolerance: float = 0.1,
        first_training: int = FIRST_TRAINING,
        retrain_every: int = RETRAIN_EVERY,
        adapt_mass: bool = True,
        model=None,
        rng=None,
        initial_point=None,
        blocked: bool = True,
    ):
        self.options = dict(
            target_accept=check_fraction("target_accept", target_accept),
            max_steps=check_count("max_steps", max_steps),
            step_size=check_step_size(step_size),
            path_length=None if path_length is None else check_positive("path_length", path_length),
            buffer_size=None if buffer_size is None else check_count("buffer_size", buffer_size),
            width=check_count("width", width),
            depth=check_count("depth", depth),
            activation=activation,
            block_size=block_size,
            block_threshold=int(block_threshold),
            train_steps=check_count("train_steps", train_steps),
            batch_size=check_count("batch_size", batch_size),
            learning_rate=check_positive("learning_rate", learning_rate),
            assess_trajectories=check_count("assess_trajectories", assess_trajectories),
            tolerance=check_nonnegative("tolerance", tolerance),
            first_training=check_count("first_training", first_training),
            retrain_every=check_count("retrain_every", retrain_every),
            adapt_mass=bool(adapt_mass),
        )
        super().__init__(vars, model=model, rng=rng, initial_point=initial_point, blocked=blocked)
        self.layout = build_layout(self._model, self.vars, initial_point=initial_point)
        self.spec = default_spec(
            self.layout.dim,
            width=width,
            depth=depth,
            activation=activation,
            block_size=block_size,
            block_threshold=block_threshold,
        )
        self.trained: TrainedNNgHMC | None = None  # set when warm-up ends
        self._trained_start: TrainedNNgHMC | None = None  # set by from_trained / load
        self._check_region = True

    # --- program -------------------------------------------------------------------------
    def _program(self, target: Target) -> ChainProgram:
        options = {k: v for k, v in self.options.items() if k not in _NETWORK_OPTIONS}
        spec = self.spec if self._trained_start is None else self._trained_start.spec
        return nnghmc_program(
            target, spec=spec, trained=self._trained_start, check_region=self._check_region,
            **options,
        )

    def _tuned(self, carry, *, batched: bool) -> None:
        carry = jax.device_get(carry)
        passed = np.asarray(carry.passed).reshape(-1)
        report = jax.tree.map(lambda a: np.asarray(a).reshape(-1), carry.report)
        final = np.asarray(carry.final_checked).reshape(-1)
        gate = jax.tree.map(lambda a: np.asarray(a).reshape(-1), carry.gate)
        message = fallback_message(report, passed, final, self.options["tolerance"],
                                   trained_start=self._trained_start is not None, gate=gate)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)
        spec = self.spec if self._trained_start is None else self._trained_start.spec
        self.trained = trained_from_carry(
            carry, batched=batched, spec=spec, layout=self.layout.fingerprint()
        )

    # --- prior swap, save and load ---------------------------------------------------------
    @classmethod
    def from_trained(
        cls,
        source: NNgHMC | TrainedNNgHMC,
        vars=None,  # noqa: A002
        *,
        model=None,
        require_passed: bool = True,
        check_region: bool = True,
        **options,
    ) -> NNgHMC:
        """An NNgHMC for ``model`` that starts where ``source``'s warm-up ended.

        ``model`` must have the same parameter layout as the model ``source`` was trained
        on (variable names, shapes, transforms; ``LayoutMismatchError`` names the first
        variable that differs) and should differ only in its priors: the network stands for
        the likelihood's gradient and the new model's prior gradient is added exactly, so a
        prior swap needs no retraining. The likelihood is not checked; a different one
        costs acceptance, never correctness (the MH test uses the new model's density).

        The new step starts in surrogate mode with the trained network, standardisation,
        step size, mass matrix and path length, and never trains: its warm-up (``tune``)
        adapts step size, mass matrix and path length with the surrogate. Once, after 75
        warm-up iterations (``REGION_CHECK``; at the end of a shorter warm-up, at the
        start with ``tune=0``), the surrogate is checked on the new posterior: 32
        trajectories from the chains' current positions, on the surrogate and on the
        true gradient, compared by the training's pass rule (``tolerance``). A surrogate
        that fails -- the new posterior lies outside the region it was trained on -- hands
        the rest of warm-up and the draws to the true gradient, with a warning.
        ``check_region=False`` skips the check (sample with the surrogate whatever it is).

        ``options`` override the sampler settings copied from ``source``.
        """
        if isinstance(source, NNgHMC):
            trained = source.trained or source._trained_start
            if trained is None:
                raise ValueError(
                    "This NNgHMC step holds no trained surrogate: it has not finished a "
                    "warm-up in this process. Sample with it first (pm.sample with cores=1, "
                    "or pymc_neural_steps.sample; with cores > 1 training happens in worker "
                    "processes), or load a saved one with NNgHMC.load."
                )
            settings = dict(source.options)
        else:
            trained, settings = source, {}
        if require_passed and not trained.passed:
            raise ValueError(
                "The trained surrogate never passed its acceptance check, so it would "
                "sample slowly. Pass require_passed=False to use it anyway."
            )
        settings.update(options)
        step = cls(vars, model=model, **settings)
        step.layout.check_compatible(trained.layout, what="the model the surrogate was trained on")
        check_trained_nnghmc(trained, step.layout.dim)
        step._trained_start = trained
        step._check_region = bool(check_region)
        return step

    def save(self, path) -> None:
        """Write the trained surrogate and warm-up results to directory ``path`` (``io.py``)."""
        trained = self.trained or self._trained_start
        if trained is None:
            raise ValueError(
                "Nothing to save: this NNgHMC step has not finished a warm-up in this process."
            )
        save_nnghmc(path, trained, self.options)

    @classmethod
    def load(cls, path, vars=None, *, model=None, **options) -> NNgHMC:  # noqa: A002
        """An NNgHMC for ``model`` from a directory written by ``save`` (no code is run).

        Refused with ``LayoutMismatchError`` naming the variable if ``model``'s layout
        differs from the saved one; otherwise as ``from_trained``.
        """
        trained, saved = read_nnghmc(path, model, vars)
        settings = {k: v for k, v in saved.items() if k in _STEP_OPTIONS}
        settings.update(options)
        return cls.from_trained(trained, vars, model=model, require_passed=False, **settings)


_NETWORK_OPTIONS = frozenset({"width", "depth", "activation", "block_size", "block_threshold"})
_STEP_OPTIONS = frozenset(
    {
        "target_accept", "max_steps", "step_size", "path_length", "buffer_size", "width",
        "depth", "activation", "block_size", "block_threshold", "train_steps", "batch_size",
        "learning_rate", "assess_trajectories", "tolerance", "first_training",
        "retrain_every", "adapt_mass",
    }
)
