"""The fast driver: every chain of a step method at once, in jitted ``lax.scan`` chunks.

``pm.sample`` calls a step method once per draw from Python, which costs 130-290 µs per
draw before any numerical work (``design.md``). ``sample`` runs the same ``ChainProgram``
(``programs/base.py``) with the chains vmapped (the leading axis of every carry array, so it
can be sharded across devices) and the draws scanned, returning to Python only between
chunks: for the progress bar and so that Ctrl-C keeps what has been drawn. The result is
the object ``pm.sample`` returns on the installed PyMC.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
from pymc.initial_point import make_initial_point_fn
from pymc.stats.convergence import log_warnings, run_convergence_checks

from pymc_neural_steps import adaptation
from pymc_neural_steps._compat import build_result
from pymc_neural_steps.placement import ChainPlacement
from pymc_neural_steps.programs.base import (
    DEFAULT_MODE,
    TRAINING_TIME_STAT,
    ChainProgram,
    iteration_key,
    training_key,
)
from pymc_neural_steps.steps import NeuralStep
from pymc_neural_steps.target import NonFiniteInitialPointError, Target
from pymc_neural_steps.validation import check_count

__all__ = ["sample"]

logger = logging.getLogger("pymc_neural_steps")

# Stats renamed as PyMC's ArviZ conversion renames them.
_RENAMED_STATS = {"model_logp": "lp"}


def _chunk_size(n: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, min(int(requested), n))
    # About 20 progress updates, on a divisor of n when one is close (no recompilation
    # for a shorter last chunk).
    target = max(1, n // 20)
    for size in range(target, max(1, target // 2) - 1, -1):
        if n % size == 0:
            return size
    return target


def _initial_positions(
    model: pm.Model, target: Target, chains: int, seeds: Sequence[int], initvals, jitter: bool
) -> np.ndarray:
    """Jittered starting points as ``pm.sample`` makes them, each with a finite density."""
    overrides = initvals if isinstance(initvals, Sequence) else [initvals] * chains
    check = jax.jit(jax.value_and_grad(target.logdensity))
    positions = []
    for chain, seed in enumerate(seeds):
        point_fn = make_initial_point_fn(
            model=model,
            overrides=overrides[chain],
            jitter_rvs=set(model.free_RVs) if jitter else set(),
            return_transformed=True,
        )
        rng = np.random.default_rng(seed)
        for _ in range(10):
            x = target.layout.ravel(point_fn(int(rng.integers(2**31))))
            value, grad = check(x)
            if np.isfinite(value) and np.all(np.isfinite(grad)):
                break
        else:
            target.check_initial_point(x)  # raises, naming the variables at fault
            raise NonFiniteInitialPointError("No initial point with a finite log density.")
        positions.append(x)
    return np.stack(positions)


class _BatchedProgram:
    """Jitted runners over all chains (the leading axis of every carry array)."""

    def __init__(self, program: ChainProgram, placement: ChainPlacement):
        self.program = program
        self.placement = placement

        def tune_chunk(carry, seeds, iterations, codes, mode):
            def body(carry, inputs):
                iteration, code = inputs
                keys = jax.vmap(iteration_key, (0, None))(seeds, iteration)
                carry, position, stats = jax.vmap(
                    lambda k, c: program.tune(k, c, code, (), mode)
                )(keys, carry)
                return carry, (position, stats)

            return jax.lax.scan(body, carry, (iterations, codes))

        def draw_chunk(carry, seeds, iterations, mode):
            def body(carry, iteration):
                keys = jax.vmap(iteration_key, (0, None))(seeds, iteration)
                carry, position, stats = jax.vmap(lambda k, c: program.draw(k, c, (), mode))(
                    keys, carry
                )
                return carry, (position, stats)

            return jax.lax.scan(body, carry, iterations)

        def train(carry, seeds, iteration):
            keys = jax.vmap(training_key, (0, None))(seeds, iteration)
            if program.pooled_train is not None:
                return program.pooled_train(keys[0], carry)
            return jax.vmap(program.train)(keys, carry)

        jit = placement.jit
        chunk_out = ("carry", ("trace", "trace"))
        self.init = jit(jax.vmap(lambda x: program.init(x, ())), "carry")
        self.tune_chunk = jit(tune_chunk, chunk_out, static_argnames="mode")
        self.draw_chunk = jit(draw_chunk, chunk_out, static_argnames="mode")
        if program.pooled_end_tune is not None:
            self.end_tune = placement.pooled(jax.jit(program.pooled_end_tune))
        else:
            self.end_tune = jit(jax.vmap(program.end_tune), "carry")
        if program.train is None:
            self.train = None
        elif program.pooled_train is not None:
            self.train = placement.pooled(jax.jit(train))
        else:
            self.train = jit(train, "carry")

    def host_view(self, carry):
        """``carry`` as the program's host-side queries may read it: with several
        processes, a host copy of every chain's part (a process sees only its own)."""
        return self.placement.fetch(carry) if self.placement.multi_process else carry

    def mode(self, carry) -> str:
        mode_of = self.program.mode_of
        return DEFAULT_MODE if mode_of is None else mode_of(self.host_view(carry))

    def done_training(self, carry) -> bool:
        done = self.program.done_training
        return done is not None and bool(done(self.host_view(carry)))

    def train_pending(self, carry) -> bool:
        pending = self.program.train_pending
        return pending is not None and bool(pending(self.host_view(carry)))

    def tune_segments(self, tune: int, chunk: int) -> list[tuple[int, int, bool]]:
        """(begin, end, train after end) pieces of warm-up, split where training happens."""
        train_at = self.program.train_at
        stops = {i + 1 for i in range(tune) if train_at is not None and train_at(i, tune)}
        segments, begin = [], 0
        for end in sorted(stops | set(range(chunk, tune, chunk)) | {tune}):
            if end > begin:
                segments.append((begin, end, end in stops))
                begin = end
        return segments


def _to_chain_major(chunks: list[np.ndarray], chains: int, width: int) -> np.ndarray:
    if not chunks:
        return np.zeros((chains, 0, width))
    return np.swapaxes(np.concatenate(chunks, axis=0), 0, 1)


def sample(
    step: NeuralStep,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int | None = None,
    progressbar: bool = True,
    initvals=None,
    jitter: bool = True,
    discard_tuned_samples: bool = True,
    chunk_size: int | None = None,
    model: pm.Model | None = None,
    compute_convergence_checks: bool = True,
    devices: int | Sequence | None = None,
):
    """Sample all chains of ``step`` at once; returns what ``pm.sample`` returns.

    Parameters
    ----------
    step
        A step method of this package (e.g. ``JaxHMC()``), created for the whole model.
    draws, tune, chains, random_seed, initvals, discard_tuned_samples
        As for ``pm.sample``.
    progressbar
        Show progress between chunks.
    jitter
        Jitter the initial points uniformly in (-1, 1) on the unconstrained scale, as
        ``pm.sample``'s default initialisation does.
    chunk_size
        Iterations per compiled call (default: about 1/20 of the run).
    compute_convergence_checks
        Run ``pm.sample``'s checks on the result (R-hat, effective sample size,
        divergences) and log its warnings, in its words and at its thresholds.
    devices
        The devices the chains are split over, evenly (``placement.choose_devices``):
        ``None`` for every device JAX sees (on one process, as many as divide ``chains``),
        an int for the first that many, or a sequence of ``jax.Device``. After
        ``jax.distributed.initialize()`` the devices of every process take part: each
        process runs its share of the chains and returns the whole result. The same seed
        gives the same draws whatever the devices (docs/scaling.md).

    Ctrl-C stops sampling between chunks and returns the draws made so far; interrupted
    before the first draw, it returns the warm-up iterations made so far (a warm-up group
    and an empty posterior).
    """
    if not isinstance(step, NeuralStep):
        raise TypeError(
            f"sample() runs the step methods of pymc_neural_steps, got {type(step).__name__}; "
            "use pm.sample for PyMC's own step methods."
        )
    draws = check_count("draws", draws)
    tune = check_count("tune", tune, minimum=0)
    chains = check_count("chains", chains)
    if model is not None and model is not step.model:
        raise ValueError(
            f"this {type(step).__name__} was created for another model: its log density is "
            "that model's, so sampling it for this one would mix two models in one result. "
            "Create the step inside `with model:` (or pass model=...), or, to reuse what a "
            "learned step learned, use its from_trained(step, model=model)."
        )
    model = pm.modelcontext(model if model is not None else step.model)
    if {v.name for v in step.vars} != {v.name for v in model.value_vars}:
        left_out = sorted({v.name for v in model.value_vars} - {v.name for v in step.vars})
        raise ValueError(
            "pymc_neural_steps.sample needs one step method for every free variable; "
            f"{left_out} are not assigned to it (use pm.sample for compound steps)."
        )

    wall_start = time.perf_counter()
    target, program = step.chain_program()
    placement = ChainPlacement.for_chains(chains, devices)
    progress = _Progress(tune + draws, chains, enabled=progressbar and placement.is_lead())
    run = _Run(program, chains, placement, progress=progress)
    try:
        carry, seeds = _start(run, model, target, chains, random_seed, initvals, jitter)
        carry = _warm_up(run, step, carry, seeds, tune, chunk_size)
        _draw(run, carry, seeds, tune, draws, chunk_size)
    except KeyboardInterrupt:
        run.interrupted = True
        what = "the draws" if run.draw_positions else "the warm-up iterations"
        warnings.warn(f"Sampling was interrupted; returning {what} made so far.", stacklevel=2)
    finally:
        run.progress.close()
    return _result(
        run, model, target, step, tune,
        keep_warmup=(not discard_tuned_samples and tune > 0) or not run.draw_positions,
        total_time=time.perf_counter() - wall_start,
        compute_convergence_checks=(
            compute_convergence_checks and not run.interrupted and placement.is_lead()
        ),
    )


class _Run:
    """What one ``sample`` call has made so far: draws, stats and timings, per phase."""

    def __init__(self, program: ChainProgram, chains: int, placement: ChainPlacement, progress):
        self.program = program
        self.placement = placement
        self.runner = _BatchedProgram(program, placement)
        self.chains = chains
        self.progress = progress
        self.warm_positions: list[np.ndarray] = []
        self.warm_stats: list[np.ndarray] = []
        self.draw_positions: list[np.ndarray] = []
        self.draw_stats: list[np.ndarray] = []
        self.tuning_time = self.sampling_time = self.training_time = 0.0
        self.interrupted = False
        # Training wall time goes into the stats of the draw after the training, if the
        # method reports it (a host measurement; the program packs a placeholder).
        names = [spec.name for spec in program.stat_specs]
        self._time_column = names.index(TRAINING_TIME_STAT) if TRAINING_TIME_STAT in names else None
        self._pending_time = 0.0

    def keep(self, positions: list, stats: list, chunk) -> None:
        """Bring a chunk's (positions, stats) to the host and keep them."""
        pos, st = self.placement.fetch(chunk)
        positions.append(pos)
        stats.append(self.host_stats(st))

    def host_stats(self, st) -> np.ndarray:
        st = np.array(st)
        if self._time_column is not None and len(st):
            st[0, :, self._time_column] = self._pending_time
            self._pending_time = 0.0
        return st

    def train(self, carry, seeds, iteration: int):
        start = time.perf_counter()
        carry = jax.block_until_ready(self.runner.train(carry, seeds, iteration))
        elapsed = time.perf_counter() - start
        self.training_time += elapsed
        self._pending_time += elapsed
        return carry


def _start(run: _Run, model, target: Target, chains, random_seed, initvals, jitter):
    """Per-chain seeds and the batched initial carry."""
    seed_seq = np.random.SeedSequence(random_seed)
    chain_seeds = [int(s.generate_state(2, np.uint64)[0] >> np.uint64(2)) for s in seed_seq.spawn(chains)]
    init_seeds = [int(s.generate_state(1)[0]) for s in seed_seq.spawn(chains)]
    positions = _initial_positions(model, target, chains, init_seeds, initvals, jitter)
    seeds = run.placement.put(np.asarray(chain_seeds, dtype=np.int64))
    return run.runner.init(run.placement.put(positions)), seeds


def _warm_up(run: _Run, step: NeuralStep, carry, seeds, tune: int, chunk_size):
    """Every warm-up iteration and training run, then the end of warm-up (frozen carry)."""
    runner, program, place = run.runner, run.program, run.placement
    start = time.perf_counter()
    mode = runner.mode(carry)
    codes = adaptation.window_codes(tune) if tune > 0 else np.zeros(0, np.int8)
    for begin, end, train_after in runner.tune_segments(tune, _chunk_size(tune, chunk_size) if tune else 1):
        carry, chunk = runner.tune_chunk(
            carry, seeds, place.put_replicated(np.arange(begin, end)),
            place.put_replicated(codes[begin:end]), mode=mode,
        )
        run.keep(run.warm_positions, run.warm_stats, chunk)
        if train_after and not runner.done_training(carry):
            carry = run.train(carry, seeds, end - 1)
            mode = runner.mode(carry)
        run.progress.update(end - begin, "warm-up")
    while runner.train_pending(carry):
        carry = run.train(carry, seeds, max(tune - 1, 0))
    carry = jax.block_until_ready(runner.end_tune(carry))
    run.tuning_time = time.perf_counter() - start
    host_carry = place.fetch(carry) if place.sharded else carry
    step.finish_warmup(host_carry, batched=True, training_time=run.training_time)
    return carry


def _draw(run: _Run, carry, seeds, tune: int, draws: int, chunk_size) -> None:
    start = time.perf_counter()
    mode = run.runner.mode(carry)
    size = _chunk_size(draws, chunk_size)
    for begin in range(0, draws, size):
        end = min(begin + size, draws)
        iterations = run.placement.put_replicated(np.arange(tune + begin, tune + end))
        carry, chunk = run.runner.draw_chunk(carry, seeds, iterations, mode=mode)
        run.keep(run.draw_positions, run.draw_stats, chunk)
        run.progress.update(end - begin, "sampling")
    run.sampling_time = time.perf_counter() - start


def _result(run: _Run, model, target: Target, step, tune, *, keep_warmup, total_time,
            compute_convergence_checks):
    """What ``pm.sample`` returns, with PyMC's convergence warnings logged as it logs them."""
    specs = run.program.stat_specs
    parts = {}
    for label, pos_chunks, stat_chunks in (
        ("posterior", run.draw_positions, run.draw_stats),
        ("warmup", run.warm_positions, run.warm_stats),
    ):
        x = _to_chain_major(pos_chunks, run.chains, target.dim)
        st = _to_chain_major(stat_chunks, run.chains, len(specs))
        parts[label] = (_constrained_draws(target, x), _stats_dict(specs, st))
    attrs = {
        "tuning_steps": tune,
        "sampling_time": run.sampling_time,
        "tuning_time": run.tuning_time,
        "training_time": run.training_time,
        "total_time": total_time,
        "step_method": type(step).__name__,
        "interrupted": int(run.interrupted),
        "devices": run.placement.describe(),
        **_gate_attrs(step),
    }
    (posterior, stats), (warm_posterior, warm_stats) = parts["posterior"], parts["warmup"]
    with warnings.catch_warnings():
        # An interrupted run may hold no draws at all: ArviZ warns about every empty array.
        warnings.simplefilter("ignore" if not run.draw_positions else "default")
        result = build_result(
            model,
            posterior=posterior,
            sample_stats=stats,
            warmup_posterior=warm_posterior if keep_warmup else None,
            warmup_sample_stats=warm_stats if keep_warmup else None,
            attrs=attrs,
        )
    if compute_convergence_checks:
        log_warnings(run_convergence_checks(result, model))
    return result


def _gate_attrs(step) -> dict:
    """The mixing gate's decision and figures (``programs/gate.py``), when the step ran it."""
    report = getattr(getattr(step, "trained", None), "report", None) or {}
    if "gate_use_learned" not in report:
        return {}
    nan = float("nan")
    return {
        "gate_use_learned": int(report["gate_use_learned"]),
        "gate_learned_ess_per_grad": nan if report["gate_learned_ess_per_grad"] is None
        else report["gate_learned_ess_per_grad"],
        "gate_hmc_ess_per_grad": nan if report["gate_hmc_ess_per_grad"] is None
        else report["gate_hmc_ess_per_grad"],
        "transitions_per_draw": int(report.get("transitions_per_draw", 1)),
    }


def _constrained_draws(target: Target, x: np.ndarray) -> dict[str, np.ndarray]:
    """Constrained values and Deterministics for draws x of shape (chain, draw, d)."""
    chains, n, dim = x.shape
    if n == 0:
        shapes = jax.eval_shape(target.constrained, jnp.zeros(dim))
        return {k: np.zeros((chains, 0, *v.shape)) for k, v in shapes.items()}
    flat = jnp.asarray(x.reshape(chains * n, dim))
    values = jax.jit(jax.vmap(target.constrained))(flat)
    return {k: np.asarray(v).reshape(chains, n, *v.shape[1:]) for k, v in values.items()}


def _stats_dict(specs, packed: np.ndarray) -> dict[str, np.ndarray]:
    return {
        _RENAMED_STATS.get(spec.name, spec.name): packed[..., i].astype(spec.dtype)
        for i, spec in enumerate(specs)
    }


class _Progress:
    """A rich progress bar over iterations of all chains (updated between chunks)."""

    def __init__(self, total: int, chains: int, enabled: bool):
        self._bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} iterations x {task.fields[chains]} chains"),
            TimeRemainingColumn(),
        )
        self._bar.start()
        self._task = self._bar.add_task("compiling", total=total, chains=chains)

    def update(self, advance: int, phase: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, description=phase)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
