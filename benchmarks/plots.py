"""The benchmark's figures, from one run's results JSON and the artifacts its cells kept.

* ``ess_per_grad.png`` / ``ess_per_second.png``: one panel per target, one bar per sampler;
  the pale bar is the draw phase alone, the dark bar the total (warm-up and training
  gradients included / wall time including compilation, warm-up and training).
* ``banana_gradient_field.png``: the true gradient field of the banana beside NNgHMC's
  learned field (∇log prior + the trained surrogate of ∇log likelihood, the field its
  leapfrog integrates), each with one long leapfrog trajectory from the same start and
  momentum, at the trained step size and mass matrix.
* ``funnel_traces.png``: the funnel's neck coordinate (x₀ = v) over the draws of chain 0,
  NUTS (PyMC, nutpie) against the learned kernels.
* ``training_curves.png``: the learned kernels' training loss, acceptance and β over
  warm-up, one line per target, where the steps expose them.

Learned samplers are found by name (``LEARNED``: ``nnghmc*``, ``l2hmc*``, ``entropy*``), so
a sampler registered later (EntropyFlowMC) appears as soon as its cells exist. A figure
that has nothing to show is reported as skipped with the reason; one that fails is
reported as failed; neither stops the others.

Run from the repository root to redraw the figures of a finished run::

    python -m benchmarks.plots benchmarks/results/<stamp>-pymc5.json [--out docs]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import artifacts  # noqa: E402

__all__ = ["FIGURES", "LEARNED", "make_all", "main"]

LEARNED = ("nnghmc*", "l2hmc*", "entropy*", "neutra*")
NUTS = ("pymc_nuts", "nutpie", "nutpie_nf")
BANANA = "banana"
FUNNELS = ("funnel_20d_s3", "funnel_20d_s1")
DPI = 110

# Colours by sampler family, so a sampler keeps its colour across figures.
_FAMILY_COLOURS = (
    ("pymc_nuts", "#4c72b0"), ("nutpie*", "#55a868"), ("jaxhmc*", "#8172b2"),
    ("nnghmc*", "#c44e52"), ("l2hmc*", "#dd8452"), ("entropy*", "#937860"),
    ("neutra*", "#da8bc3"),
)


def _colour(sampler: str) -> str:
    for pattern, colour in _FAMILY_COLOURS:
        if fnmatch.fnmatchcase(sampler, pattern):
            return colour
    return "#7f7f7f"


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class Skip(Exception):
    """A figure with nothing to show (not an error)."""


# --- ESS bar charts ----------------------------------------------------------------------------

def _bar_chart(results: dict[str, Any], path: Path, draw_key: str, total_key: str, unit: str) -> None:
    cells = results["cells"]
    targets = list(dict.fromkeys(c["target"] for c in cells))
    samplers = list(dict.fromkeys(c["sampler"] for c in cells))
    if not any(c["status"] == "ok" for c in cells):
        raise Skip("no cell ran")
    by_key = {(c["target"], c["sampler"]): c for c in cells}
    columns = min(3, len(targets))
    rows = math.ceil(len(targets) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 0.32 * len(samplers) * rows + 1.2 * rows + 0.6),
                             squeeze=False)
    for ax, target in zip(axes.flat, targets):
        y = np.arange(len(samplers))
        values = []
        for i, sampler in enumerate(samplers):
            cell = by_key.get((target, sampler))
            if cell is None or cell["status"] != "ok":
                label = "not run" if cell is None else cell["status"]
                ax.text(0.02, i, label, transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.4")
                continue
            draw, total = cell.get(draw_key), cell.get(total_key)
            colour = _colour(sampler)
            if _finite(draw):
                ax.barh(i, draw, color=colour, alpha=0.35, height=0.8)
                values.append(draw)
            if _finite(total):
                incomplete = total_key == "ess_per_grad_total" and cell.get("ess_per_grad_total_complete") is False
                ax.barh(i, total, color=colour, height=0.5, hatch="//" if incomplete else None,
                        edgecolor="white" if incomplete else None)
                values.append(total)
            if not _finite(draw) and draw_key == "ess_per_grad" and cell.get("grad_evals") == 0:
                # NNgHMC on its surrogate: no true gradient in the draw phase, ESS/grad unbounded
                ax.text(0.98, i, "draw phase: no true gradients", transform=ax.get_yaxis_transform(), ha="right",
                        va="center", fontsize=7, color=colour)
            elif not (_finite(draw) or _finite(total)):
                ax.text(0.02, i, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.4")
        ax.set_yticks(y, samplers, fontsize=8)
        ax.invert_yaxis()
        if values:
            ax.set_xscale("log")
            ax.set_xlim(min(values) / 2, max(values) * 2)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(target, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", which="major", alpha=0.3)
    for ax in axes.flat[len(targets):]:
        ax.axis("off")
    fig.supxlabel(unit, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def ess_per_grad(results, artifacts_dir, path) -> str:
    _bar_chart(results, path, "ess_per_grad", "ess_per_grad_total",
               "min bulk ESS per true gradient (pale: draw phase; dark: incl. warm-up and training; hatched: training gradients unreported)")
    return ("Minimum bulk ESS per true gradient evaluation, per target and sampler (log scale). Pale bars: draw phase "
            "only; dark bars: warm-up and training gradients included. Surrogate network evaluations are not gradients.")


def ess_per_second(results, artifacts_dir, path) -> str:
    _bar_chart(results, path, "ess_per_second_sampling", "ess_per_second",
               "min bulk ESS per second (pale: draw phase; dark: total wall time incl. compilation, warm-up, training)")
    return ("Minimum bulk ESS per second, per target and sampler (log scale). Pale bars: draw phase only (nutpie's "
            "estimated); dark bars: total wall time including compilation, warm-up and training, on this machine.")


# --- the banana's gradient fields ----------------------------------------------------------------

def _trained_nnghmc(results: dict[str, Any], artifacts_dir: Path | None, train_missing: bool) -> tuple[Any, str]:
    """The trained NNgHMC kernel of the banana: the run's, else (``train_missing``) one trained here."""
    if artifacts_dir is not None:
        names = sorted({c["sampler"] for c in results["cells"]
                        if c["target"] == BANANA and c["status"] == "ok" and fnmatch.fnmatchcase(c["sampler"], "nnghmc*")},
                       key=lambda n: (n != "nnghmc", n))  # the fast driver's pooled surrogate first
        for name in names:
            trained = artifacts.load_trained(artifacts_dir, BANANA, name)
            if trained is not None:
                return trained, f"the run's {name} cell"
    if not train_missing:
        raise Skip("no NNgHMC cell on the banana kept a trained surrogate (python -m benchmarks.plots "
                   "--train-missing trains one)")
    import pymc_neural_steps as pns
    from pymc_neural_steps import testing

    if not hasattr(pns, "NNgHMC"):
        raise Skip("pymc_neural_steps has no NNgHMC")
    with testing.banana(1.0, 0.1, 1.0).build_model():
        step = pns.NNgHMC()
        pns.sample(step, draws=50, tune=1000, chains=2, random_seed=1, progressbar=False)
    if step.trained is None:
        raise Skip("NNgHMC kept no trained surrogate")
    return step.trained, "a 2-chain, 1000-iteration NNgHMC warm-up run by plots.py (the run kept none)"


def _leapfrog_path(gradient: Callable, x0: np.ndarray, p0: np.ndarray, step_size: float,
                   inverse_mass: np.ndarray, steps: int) -> np.ndarray:
    """Positions along ``steps`` leapfrog steps of the field ``gradient`` (``kernels/hmc.py``'s scheme)."""
    x, p = np.array(x0, float), np.array(p0, float)
    g = np.asarray(gradient(x))
    path = [x.copy()]
    for _ in range(steps):
        p = p + 0.5 * step_size * g
        x = x + step_size * inverse_mass * p
        g = np.asarray(gradient(x))
        if not np.all(np.isfinite(x)) or not np.all(np.isfinite(g)):
            break
        p = p + 0.5 * step_size * g
        path.append(x.copy())
    return np.array(path)


def banana_gradient_field(results, artifacts_dir, path, train_missing: bool = False) -> str:
    if not any(c["target"] == BANANA for c in results["cells"]):
        raise Skip("the banana was not in this run")
    import jax
    import jax.numpy as jnp

    import pymc_neural_steps as pns
    from pymc_neural_steps import testing

    trained, origin = _trained_nnghmc(results, artifacts_dir, train_missing)
    target = pns.build_target(testing.banana(1.0, 0.1, 1.0).build_model())
    if target.dim != 2:
        raise Skip(f"the banana's parameter vector has dimension {target.dim}, not 2")
    surrogate = trained.surrogate
    true_grad = jax.jit(jax.grad(target.logdensity))
    prior_grad = jax.grad(target.log_prior)
    learned_grad = jax.jit(lambda x: prior_grad(x) + surrogate(x))  # the field NNgHMC's leapfrog integrates
    logdensity = jax.jit(jax.vmap(target.logdensity))

    x1 = np.linspace(-1.5, 3.5, 22)
    x2 = np.linspace(-4.0, 10.0, 22)
    grid = np.array(np.meshgrid(x1, x2)).reshape(2, -1).T
    fields = {
        "true gradient ∇log p": np.asarray(jax.vmap(true_grad)(jnp.asarray(grid))),
        "learned field (NNgHMC)": np.asarray(jax.vmap(learned_grad)(jnp.asarray(grid))),
    }
    fine1, fine2 = np.meshgrid(np.linspace(-1.5, 3.5, 150), np.linspace(-4.0, 10.0, 150))
    density = np.asarray(logdensity(jnp.asarray(np.stack([fine1.ravel(), fine2.ravel()], 1)))).reshape(fine1.shape)

    step_size, inverse_mass = float(trained.step_size), np.asarray(trained.inverse_mass, float)
    steps = int(min(400, max(100, math.ceil(4 * math.pi / step_size))))
    x0 = np.array([1.0, 1.5])
    p0 = np.array([1.0, 1.0]) / np.sqrt(inverse_mass)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharex=True, sharey=True)
    error = np.linalg.norm(fields["learned field (NNgHMC)"] - fields["true gradient ∇log p"], axis=1)
    scale = np.linalg.norm(fields["true gradient ∇log p"], axis=1)
    for ax, (title, field) in zip(axes, fields.items()):
        ax.contour(fine1, fine2, density, levels=np.quantile(density, [0.5, 0.75, 0.9, 0.97]), colors="0.75",
                   linewidths=0.8)
        norm = np.linalg.norm(field, axis=1)
        # Arrows of equal length on screen pointing along the field in data coordinates
        # (the axes' x and y ranges differ, so normalise in axes fractions, then map back).
        ranges = np.array([x1[-1] - x1[0], x2[-1] - x2[0]])
        fraction = field / ranges
        fraction /= np.maximum(np.linalg.norm(fraction, axis=1, keepdims=True), 1e-300)
        arrows = 0.035 * fraction * ranges
        quiver = ax.quiver(grid[:, 0], grid[:, 1], arrows[:, 0], arrows[:, 1], np.log10(np.maximum(norm, 1e-6)),
                           cmap="viridis", angles="xy", scale_units="xy", scale=1, width=0.004)
        gradient = true_grad if title.startswith("true") else learned_grad
        trajectory = _leapfrog_path(lambda x: gradient(jnp.asarray(x)), x0, p0, step_size, inverse_mass, steps)
        ax.plot(trajectory[:, 0], trajectory[:, 1], color="#c44e52", lw=1.2, label=f"leapfrog, {len(trajectory) - 1} steps")
        ax.plot(*x0, "o", color="#c44e52", ms=5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x₁")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("x₂")
    fig.colorbar(quiver, ax=axes, label="log₁₀ |field| (arrows show direction)", shrink=0.8)
    fig.suptitle(f"Banana: true vs learned gradient field (trained step size {step_size:.3g}; median relative error "
                 f"on the plotted grid {np.median(error / np.maximum(scale, 1e-12)):.2g})", fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return (f"The banana's true gradient field (left) and NNgHMC's learned field, ∇log prior + trained surrogate "
            f"(right; from {origin}), with one {steps}-step leapfrog trajectory on each from the same start and "
            f"momentum, at the trained step size and mass matrix. Grey: density contours. The MH test on the true "
            f"density keeps the sampler exact whatever the right-hand field gets wrong.")


# --- the funnel's neck --------------------------------------------------------------------------

def funnel_traces(results, artifacts_dir, path) -> str:
    if artifacts_dir is None:
        raise Skip("the run kept no artifacts")
    ran = {(c["target"], c["sampler"]) for c in results["cells"] if c["status"] == "ok"}
    funnel = next((f for f in FUNNELS if any(t == f for t, _ in ran)), None)
    if funnel is None:
        raise Skip("no funnel target ran")
    def order(sampler: str) -> tuple[int, str]:
        group = next(i for i, pattern in enumerate(NUTS + LEARNED) if fnmatch.fnmatchcase(sampler, pattern))
        return group, sampler

    samplers = sorted((s for t, s in ran if t == funnel and _matches(s, NUTS + LEARNED)), key=order)
    traces = {}
    for sampler in samplers:
        kept = artifacts.load_cell(artifacts_dir, funnel, sampler)
        if kept is not None and "trace.v" in kept:
            traces[sampler] = kept["trace.v"][0]
    if not traces:
        raise Skip(f"no NUTS or learned-kernel trace of v kept for {funnel}")
    sigma = 3.0 if funnel.endswith("s3") else 1.0
    fig, axes = plt.subplots(len(traces), 1, figsize=(10, 1.5 * len(traces) + 0.8), sharex=True, sharey=True, squeeze=False)
    for ax, (sampler, v) in zip(axes[:, 0], traces.items()):
        ax.axhspan(-2 * sigma, 2 * sigma, color="0.92", zorder=0)
        ax.plot(v, lw=0.5, color=_colour(sampler))
        cell = next(c for c in results["cells"] if c["target"] == funnel and c["sampler"] == sampler)
        ax.set_ylabel(sampler, fontsize=8)
        ax.text(1.0, 1.02, f"min ESS bulk {cell['ess_bulk']:.0f}, R-hat {cell['r_hat_max']:.2f}, "
                f"{cell.get('divergences') or 0} divergences (all chains)",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    axes[-1, 0].set_xlabel("draw (chain 0)")
    fig.suptitle(f"{funnel}: the neck coordinate x₀ = v over time; grey band: ±2σ of v ~ N(0, {sigma:g}²)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return (f"Draws of the funnel's neck coordinate x₀ = v ({funnel}, chain 0) for NUTS and the learned kernels. "
            f"A sampler that reaches the neck visits v ≪ 0; the grey band holds 95 % of the true marginal.")


# --- training curves ----------------------------------------------------------------------------

_CURVES = (
    ("loss", ("warmup.training_loss",), "training loss"),
    ("acceptance", ("warmup.training_acceptance", "warmup.acceptance_rate"), "acceptance"),
    ("β", ("warmup.beta",), "β (entropy weight)"),
)


def _curve(kept: dict[str, np.ndarray], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(iterations, values, key) of the first of ``keys`` with finite values, chain 0."""
    for key in keys:
        if key not in kept:
            continue
        values = np.asarray(kept[key][0], float)
        if key == "warmup.training_loss" and "warmup.training" in kept:
            values = np.where(kept["warmup.training"][0] > 0, values, np.nan)  # NNgHMC carries the last loss
        iterations = np.arange(values.size)
        if key == "warmup.acceptance_rate" and values.size > 50:  # per transition: smooth to see the trend
            width = 25
            values = np.convolve(np.nan_to_num(values), np.ones(width) / width, mode="valid")
            iterations = iterations[width // 2: width // 2 + values.size]
        finite = np.isfinite(values)
        if finite.any():
            return iterations[finite], values[finite], key
    return None


def training_curves(results, artifacts_dir, path) -> str:
    if artifacts_dir is None:
        raise Skip("the run kept no artifacts")
    learned = [s for s in dict.fromkeys(c["sampler"] for c in results["cells"]) if _matches(s, LEARNED)]
    rows = []
    for sampler in learned:
        kept = {c["target"]: artifacts.load_cell(artifacts_dir, c["target"], sampler)
                for c in results["cells"] if c["sampler"] == sampler and c["status"] == "ok"}
        kept = {t: k for t, k in kept.items() if k is not None}
        if kept:
            rows.append((sampler, kept))
    if not rows:
        raise Skip("no learned kernel ran (nnghmc*, l2hmc*, entropy*)")
    fig, axes = plt.subplots(len(rows), len(_CURVES), figsize=(13, 2.8 * len(rows) + 0.6), squeeze=False)
    used: dict[str, set[str]] = {}
    for r, (sampler, kept) in enumerate(rows):
        for c, (name, keys, label) in enumerate(_CURVES):
            ax = axes[r, c]
            drawn = False
            for target, arrays in kept.items():
                curve = _curve(arrays, keys)
                if curve is None:
                    continue
                iterations, values, key = curve
                style = "o-" if iterations.size < 40 else "-"
                ax.plot(iterations, values, style, ms=3, lw=0.9, label=target)
                used.setdefault(f"{sampler}:{name}", set()).add(key.split(".", 1)[1])
                drawn = True
            if drawn:
                if name == "loss":
                    lows = [line.get_ydata().min() for line in ax.get_lines()]
                    ax.set_yscale("log" if min(lows) > 0 else "symlog")
                ax.legend(fontsize=6, loc="best")
                sources = ", ".join(sorted(used[f"{sampler}:{name}"]))
                ax.set_title(f"{sampler}: {label} ({sources})", fontsize=8)
            else:
                ax.text(0.5, 0.5, f"{sampler} exposes no {label}", transform=ax.transAxes, ha="center", va="center",
                        fontsize=8, color="0.4")
                ax.set_title(f"{sampler}: {label}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("warm-up iteration", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return ("Training curves of the learned kernels over warm-up, chain 0 (the fast driver trains one pooled kernel "
            "for all chains): the loss at each training round, the acceptance (the training ensemble's where "
            "reported, else the chain's own, smoothed over 25 iterations) and the entropy weight β (EntropyFlowMC "
            "only). One line per target.")


# --- all of them --------------------------------------------------------------------------------

def funnel_transport_scale(results, artifacts_dir, path) -> str:
    """NeuTraHMC's learned map on the σ = 3 funnel: the scale it gives x_i (∂x_i/∂z_i, the
    base's unit step in x_i) as a function of v along the map's own v axis, against the
    true conditional sd e^{v/2}."""
    if artifacts_dir is None:
        raise Skip("the run kept no artifacts")
    funnel = FUNNELS[0]
    trained = next((artifacts.load_trained(artifacts_dir, funnel, s)
                    for s in ("neutra", "neutra_pymc")
                    if artifacts.load_trained(artifacts_dir, funnel, s) is not None), None)
    if trained is None:
        raise Skip(f"no NeuTraHMC map kept for {funnel}")
    import jax
    import jax.numpy as jnp

    from pymc_neural_steps.kernels import transport

    flow = jax.tree.map(jnp.asarray, trained.networks)
    whitening = transport.Whitening(jnp.asarray(trained.center),
                                    jnp.sqrt(jnp.asarray(trained.inverse_mass)))
    dim = int(flow.dim)
    grid = jnp.linspace(-3.0, 3.0, 121)

    def scales(zv):
        z = jnp.zeros(dim).at[0].set(zv)
        jacobian = jax.jacfwd(lambda z: transport.forward(flow, whitening, z)[0])(z)
        return transport.forward(flow, whitening, z)[0][0], jnp.diag(jacobian)[1:]  # v is x₀

    v, diag = jax.vmap(scales)(grid)
    v, diag = np.asarray(v), np.asarray(diag)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i in range(diag.shape[1]):
        ax.plot(v, diag[:, i], lw=0.8, color=_colour("neutra"), alpha=0.5,
                label="learned ∂x_i/∂z_i (each x_i)" if i == 0 else None)
    ax.plot(v, np.exp(v / 2), "k--", lw=1.2, label="true conditional sd e^{v/2}")
    ax.set_yscale("log")
    ax.set_xlabel("v = x₀ (along the map's v axis, z_v from −3 to 3, other z = 0)")
    ax.set_ylabel("scale of x_i")
    ax.legend(fontsize=8)
    ax.set_title(f"{funnel}: NeuTraHMC's transport map against the funnel's scale", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return ("The scale NeuTraHMC's learned map gives each x_i as a function of v (its Jacobian's diagonal "
            "along the map's v axis, z_v ∈ [−3, 3], other z = 0), against the funnel's true conditional sd "
            "e^{v/2}. Where they agree the pulled-back posterior is a unit Gaussian and latent HMC takes one step "
            "size everywhere, neck included.")


FIGURES: tuple[tuple[str, str, str, Callable], ...] = (
    ("ess_per_grad", "ess_per_grad.png", "ESS per gradient", ess_per_grad),
    ("ess_per_second", "ess_per_second.png", "ESS per second", ess_per_second),
    ("banana_gradient_field", "banana_gradient_field.png", "Banana: true vs learned gradient field", banana_gradient_field),
    ("funnel_traces", "funnel_traces.png", "Funnel: x₀ over time", funnel_traces),
    ("funnel_transport_scale", "funnel_transport_scale.png", "Funnel: NeuTraHMC's map scale against e^{v/2}",
     funnel_transport_scale),
    ("training_curves", "training_curves.png", "Training curves", training_curves),
)


def make_all(results: dict[str, Any], artifacts_dir: Path | None, out_dir: Path,
             only: Sequence[str] | None = None, train_missing: bool = False) -> list[dict[str, Any]]:
    """Draw every figure into ``out_dir``; one record per figure (status ok / skipped / failed).

    ``train_missing``: if the run kept no trained NNgHMC for the banana, train one here
    (about a minute) instead of skipping its figure.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for name, file, title, draw in FIGURES:
        if only is not None and name not in only:
            continue
        record: dict[str, Any] = {"name": name, "file": file, "title": title}
        try:
            extra = {"train_missing": train_missing} if draw is banana_gradient_field else {}
            record["caption"] = draw(results, artifacts_dir, out_dir / file, **extra)
            record["status"] = "ok"
        except Skip as reason:
            record.update(status="skipped", error=str(reason))
        except Exception as error:  # noqa: BLE001 -- one figure's failure must not lose the others
            record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        finally:
            plt.close("all")
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description="Redraw a benchmark run's figures.")
    parser.add_argument("results", type=Path, help="the run's JSON (benchmarks/results/<stamp>-pymc<major>.json)")
    parser.add_argument("--out", type=Path, help="directory for the PNGs (default: <stamp>-pymc<major>-plots beside the JSON)")
    parser.add_argument("--only", help="comma-separated figure names: " + ", ".join(f[0] for f in FIGURES))
    parser.add_argument("--train-missing", action="store_true",
                        help="train an NNgHMC on the banana here if the run kept none (about a minute)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    artifacts_dir = args.results.parent / results["artifacts_dir"] if results.get("artifacts_dir") else None
    out = args.out or args.results.parent / (args.results.stem + "-plots")
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    for record in make_all(results, artifacts_dir, out, only, train_missing=args.train_missing):
        print(f"{record['name']}: {record['status']}" + (f" — {record['error']}" if record.get("error") else "")
              + (f" -> {out / record['file']}" if record["status"] == "ok" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
