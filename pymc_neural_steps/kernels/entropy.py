"""The proposal-entropy neural sampler: a gradient-informed conditional flow proposal.

Source: Z. Li, Y. Chen, F. T. Sommer, "A Neural Network MCMC Sampler That Maximizes
Proposal Entropy", Entropy 23(3):269 (2021) (ICLR 2021 submission, arXiv:2010.03587),
§3.1–3.3; summarised in ``algorithms.md`` §3. Section numbers below are the paper's.

Proposal (§3.2). From x, draw z₀ ~ N(0, I_d), push it through a conditional flow
z = f(z₀; x) and propose x' = x + ε z. The flow has N coupling steps; step k updates the
coordinates selected by a fixed binary mask m_k, then those selected by m̄_k = 1 − m_k.
Updating the half selected by a mask m, conditioned on the other half:

    ζ = (x, m̄⊙z)                                    input of R
    g = ∇U(x + R(ζ))                                  R chooses where ∇U is evaluated
    ξ = (x, m̄⊙z, g)                                  input of S, Q, T
    z ← m̄⊙z + m⊙( z⊙exp(S(ξ)) − ε₀ (g⊙exp(Q(ξ)) + T(ξ)) ),   ε₀ = ε / (2N)      (F)

S and Q pass through a soft bound 10·tanh(·/10) (the identity in practice, a guard
against exp overflow). R, S, Q, T see z only through m̄⊙z, which the update leaves
unchanged, so (F) is inverted exactly, half by half in reverse order:

    z ← m̄⊙z + m⊙( (z + ε₀ (g⊙exp(Q) + T)) ⊙ exp(−S) ).

The log-Jacobian is the sum of the masked S outputs, so with base density N(0, I)

    log q(x'|x) = log N(z₀; 0, I) − Σ_halves Σ_i m_i S_i − d log ε.

The reverse density q(x|x') runs the inverse flow conditioned on x' from
z_rev = (x − x')/ε, and the MH test accepts with probability
min(1, p(x') q(x|x') / (p(x) q(x'|x))) — an ordinary MH test, exact for any networks.

MALA at zero networks. With S = Q = T = R = 0 every half-update subtracts ε₀∇U(x) from the
coordinates it owns; each coordinate is owned by exactly one half of each coupling step, so
after N steps z = z₀ − N ε₀ ∇U(x) = z₀ − ½ε∇U(x) and x' = x + ε z₀ − ½ε²∇U(x): MALA with
step ε (proposal N(x + ½ε²∇log p(x), ε² I)). So the doc's ε₀ = ε/(2N) is exactly the
constant that makes the untrained sampler MALA; all output layers start at zero.

Variant without R (``use_r=False``, the paper's cheaper variant): every half-update of the
forward flow uses g = ∇U(x) and every half-update of the inverse flow uses ∇U(x'). The
gradient at x is carried in the state, and the one at x' comes with log p(x'), so a
transition costs ONE gradient evaluation. With R, each half-update evaluates ∇U at its own
point: 2N per direction, 4N per transition, plus one log density (no gradient) at x'.

Preconditioning. Given a fixed preconditioner (loc μ, scale S), the flow runs in whitened
coordinates y = S⁻¹(x − μ). S is either diagonal (a vector s of posterior standard
deviations, the square root of ``hmc.py``'s inverse mass: S y = s⊙y) or dense (a (d, d)
lower-triangular Cholesky factor L of a covariance estimate Σ = L Lᵀ: S y = L y); the maps
are ``whitening.py``'s and dispatch on ``scale.ndim``. Then log p_y(y) = log p(μ + S y) +
log|det S| and ∇_y log p_y = Sᵀ∇_x log p. The map is a fixed bijection with constant
Jacobian, so q_x(x'|x) = q_y(y'|y) / |det S| and |det S| cancels in the MH ratio: the chain
is exact for ANY fixed (μ, S); it must not change during a chain. At zero networks the
proposal is preconditioned MALA, N(x + ½ε²Σ∇log p(x), ε²Σ) with Σ = S Sᵀ. Only a dense S
undoes correlations and rotations: on a rotated ill-conditioned Gaussian the diagonally
whitened target keeps its condition number (~1e4 for ``testing.rotated_gaussian(20)``).
Densities and log-determinants reported here are in model coordinates (they include
−log|det S| and +log|det S| respectively). Networks are trained in whitened coordinates,
so a trained ``FlowNetworks`` belongs with the preconditioner it was trained under.

Training objective (§3.3), per starting point x, maximised (a Jensen lower bound on
log[acceptance × exp(β · entropy)]):

    L(x) = E_{z₀}[ min(0, log p(x') + log q(x|x') − log p(x) − log q(x'|x))
                   + β log|det ∂x'/∂z₀| ]

differentiated through the ∇U terms (second derivatives of log p; the paper found that
stopping those gradients hurts), with ε trainable. ``beta_update`` adapts β to hold the
mean acceptance near a target.

Conventions (``hmc.py``): functions of the flat vector x return log p(x); gradient
functions return ∇log p, so ∇U = −∇log p. ``init`` / ``build_kernel(...) -> kernel(key,
state, nets, preconditioner) -> (state, info)`` with NamedTuples, no hidden state.
``FlowNetworks`` holds only arrays (static fields aside), so it passes through ``jax.jit``,
``vmap`` and ``lax.scan`` as an ordinary argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import whitening
from pymc_neural_steps.kernels.hmc import mh_accept
from pymc_neural_steps.nets import ACTIVATIONS

__all__ = [
    "DEFAULT_BETA_RATE",
    "DEFAULT_TARGET_ACCEPTANCE",
    "EntropyInfo",
    "EntropyState",
    "FlowNetworks",
    "ObjectiveAux",
    "Preconditioner",
    "beta_update",
    "build_kernel",
    "entropy_objective",
    "flow_forward",
    "flow_inverse",
    "grad_evals_per_transition",
    "identity_preconditioner",
    "init",
    "init_networks",
    "log_acceptance_ratio",
    "log_q",
    "preconditioner_from_inverse_mass",
    "proposal",
]

# The β controller holds the training batch's mean acceptance near this rate. The paper
# adapts β toward a target acceptance, high for well-behaved targets and lower for hard
# ones (algorithms.md §3); its reported ESS per MH step of 0.86–0.89 on the Gaussian
# benchmarks is only reachable with acceptance around 0.9, hence the default. Lower it
# (≈0.6–0.7) for funnels and other targets where high acceptance forces tiny proposals.
DEFAULT_TARGET_ACCEPTANCE = 0.9
# Per-update gain of log β: a batch 0.1 above target raises β by e^{0.01} ≈ 1 %, slow
# enough that β tracks the networks rather than the Monte Carlo noise of one batch.
DEFAULT_BETA_RATE = 0.1

GradientFn = Callable[[jax.Array], jax.Array]
LogDensityFn = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------


class _MLP(eqx.Module):
    """A fully connected network: weights and biases as plain arrays, activation by name.

    Private stand-in for ``nets.mlp`` (same architecture, same uniform ±1/√fan_in
    initialisation as ``eqx.nn.Linear``, zeroed output layer). Two reasons: ``eqx.nn.MLP``
    stores its activation function as a pytree leaf, which ``jax.jit`` refuses as an
    argument, whereas here the name is static and ``FlowNetworks`` passes through plain
    ``jit``/``vmap``/``scan``; and it is initialised with NumPy, because initialising 4N
    networks with JAX's RNG compiles one XLA program per layer shape (seconds per call).
    """

    weights: tuple[jax.Array, ...]
    biases: tuple[jax.Array, ...]
    activation: str = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = act(w @ x + b)
        return self.weights[-1] @ x + self.biases[-1]


def _init_mlp(rng, in_size, out_size, width, depth, activation, dtype) -> _MLP:
    sizes = [in_size] + [width] * depth + [out_size]
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        weights.append(jnp.asarray(rng.uniform(-bound, bound, (fan_out, fan_in)), dtype))
        biases.append(jnp.asarray(rng.uniform(-bound, bound, fan_out), dtype))
    # Zero output layer: the untrained sampler is exactly MALA (nets.zero_output_layer).
    weights[-1] = jnp.zeros_like(weights[-1])
    biases[-1] = jnp.zeros_like(biases[-1])
    return _MLP(tuple(weights), tuple(biases), activation)


# S and Q enter exponents. A soft bound B·tanh(·/B) is the identity for |S| ≪ B (gradients
# unharmed) and caps one half-update's log-stretch at ±B, so no weight can overflow
# exp(S) into a non-finite density. A tight trainable bound (L2HMC's tanh head with a
# learned scale) was tried and hurts: the head saturates, its gradient vanishes, and
# training stalls and then collapses.
LOG_SCALE_BOUND = 10.0


def _soft_bound(v):
    return LOG_SCALE_BOUND * jnp.tanh(v / LOG_SCALE_BOUND)


class _HalfStep(eqx.Module):
    """Networks of one half-update of (F): S, Q, T from ξ (one trunk, 3d outputs), R from ζ."""

    sqt: _MLP  # ξ = (x, m̄⊙z, ∇U) ∈ R^{3d} -> (S, Q, T) ∈ R^{3d}
    r: _MLP | None  # ζ = (x, m̄⊙z) ∈ R^{2d} -> offset of the gradient point ∈ R^d

    def heads(self, x, z_cond, grad_u):
        d = x.shape[-1]
        out = self.sqt(jnp.concatenate([x, z_cond, grad_u]))
        return _soft_bound(out[:d]), _soft_bound(out[d : 2 * d]), out[2 * d :]


class FlowNetworks(eqx.Module):
    """Trainable parts of the proposal: 2N half-step networks and log ε.

    ``halves[2k]`` updates the coordinates where ``masks[k]`` is True, ``halves[2k+1]``
    the others. Masks are fixed (static), everything else is a trainable leaf; select the
    trainable part with ``eqx.is_inexact_array``.
    """

    halves: tuple[_HalfStep, ...]
    log_step_size: jax.Array
    masks: tuple[tuple[bool, ...], ...] = eqx.field(static=True)
    use_r: bool = eqx.field(static=True)

    @property
    def num_coupling_steps(self) -> int:
        return len(self.masks)

    @property
    def dim(self) -> int:
        return len(self.masks[0])

    @property
    def step_size(self) -> jax.Array:
        return jnp.exp(self.log_step_size)


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).ravel().tolist())


def _balanced_mask(rng: np.random.Generator, dim: int) -> tuple[bool, ...]:
    # A random half (ceil(d/2) coordinates), different for each coupling step, so that
    # coordinates are not always paired with the same conditioning partners.
    mask = np.zeros(dim, dtype=bool)
    mask[rng.permutation(dim)[: (dim + 1) // 2]] = True
    return tuple(bool(b) for b in mask)


def init_networks(
    key: jax.Array,
    dim: int,
    num_coupling_steps: int = 1,
    width: int = 64,
    depth: int = 2,
    step_size: float | None = None,
    use_r: bool = True,
    activation: str = "tanh",
    dtype=jnp.float64,
) -> FlowNetworks:
    """Fresh networks whose proposal is exactly MALA with step ``step_size``.

    Defaults: ``num_coupling_steps=1`` — the paper's reported ESS per gradient is a quarter
    of its ESS per MH step (0.215 vs 0.86 on the 50-d Gaussian, 0.22 vs 0.89 on the 2-d
    one), i.e. four gradients per transition = 2N per direction with N = 1 and R.
    ``width=64, depth=2``: small MLPs with two hidden layers; the inputs are 2d–3d wide,
    64 units are enough for the benchmarks here (d ≤ 50) and keep a network evaluation far
    cheaper than a gradient of a real model. ``activation="tanh"``: smooth (the objective
    differentiates through the flow) and bounded for large gradient inputs.
    ``step_size`` (in whitened coordinates) defaults to d^(-1/6), MALA's optimal scaling
    for a standard normal, on the conservative side for a high target acceptance.
    """
    if dim < 1 or num_coupling_steps < 1:
        raise ValueError("dim and num_coupling_steps must be positive")
    if step_size is None:
        step_size = dim ** (-1.0 / 6.0)
    rng = _numpy_rng(key)
    masks = tuple(_balanced_mask(rng, dim) for _ in range(num_coupling_steps))

    def half_step():
        sqt = _init_mlp(rng, 3 * dim, 3 * dim, width, depth, activation, dtype)
        r = _init_mlp(rng, 2 * dim, dim, width, depth, activation, dtype) if use_r else None
        return _HalfStep(sqt, r)

    halves = tuple(half_step() for _ in range(2 * num_coupling_steps))
    return FlowNetworks(
        halves=halves,
        log_step_size=jnp.asarray(math.log(step_size), dtype),
        masks=masks,
        use_r=use_r,
    )


def grad_evals_per_transition(nets: FlowNetworks) -> tuple[int, int]:
    """(true gradients, log densities without gradient) spent by one kernel transition."""
    if not nets.use_r:
        return 1, 0  # ∇log p(x') with log p(x'); ∇log p(x) comes from the state
    return 2 * _num_active_halves(nets), 1  # 2N forward + 2N reverse, and log p(x')


def _num_active_halves(nets: FlowNetworks) -> int:
    # For d = 1 the second half of each step owns no coordinate and is skipped.
    return sum(int(any(m)) + int(not all(m)) for m in nets.masks)


def _half_schedule(nets: FlowNetworks):
    """(network, mask of the updated half) in forward order, skipping empty halves."""
    steps = []
    for k, mask in enumerate(nets.masks):
        m = np.asarray(mask)
        for j, half_mask in enumerate((m, ~m)):
            if half_mask.any():
                steps.append((nets.halves[2 * k + j], jnp.asarray(half_mask)))
    return steps


# --------------------------------------------------------------------------------------
# The flow (F) in whitened coordinates
# --------------------------------------------------------------------------------------


def _half_update(half, mask, x, z, eps0, grad_fn, grad_x, inverse):
    z_cond = jnp.where(mask, 0.0, z)  # m̄⊙z: identical before and after the update
    if half.r is not None:
        grad_logp = grad_fn(x + half.r(jnp.concatenate([x, z_cond])))
    else:
        grad_logp = grad_x
    grad_u = -grad_logp
    s, q, t = half.heads(x, z_cond, grad_u)
    drift = eps0 * (grad_u * jnp.exp(q) + t)
    if inverse:
        updated = (z + drift) * jnp.exp(-s)
    else:
        updated = z * jnp.exp(s) - drift
    # `where`, not m⊙updated + m̄⊙z: an overflow in the untouched half must not leak NaN.
    z_new = jnp.where(mask, updated, z)
    return z_new, jnp.sum(jnp.where(mask, s, 0.0))


def _check_gradient_source(nets, grad_fn, grad_x):
    if nets.use_r and grad_fn is None:
        raise ValueError("the R variant evaluates ∇log p inside the flow: pass grad_fn")
    if not nets.use_r and grad_x is None and grad_fn is None:
        raise ValueError("pass grad_fn or the gradient at x (grad_x)")


def flow_forward(
    nets: FlowNetworks,
    x: jax.Array,
    z0: jax.Array,
    grad_fn: GradientFn | None,
    grad_x: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """z = f(z₀; x) and log|det ∂z/∂z₀| (the sum of the masked S outputs).

    ``x`` and ``grad_fn`` (returning ∇log p) are in the flow's (whitened) coordinates.
    Without R only ∇log p(x) is needed: pass it as ``grad_x`` to avoid evaluating it.
    """
    _check_gradient_source(nets, grad_fn, grad_x)
    if not nets.use_r and grad_x is None:
        grad_x = grad_fn(x)
    eps0 = nets.step_size / (2 * nets.num_coupling_steps)
    z, log_det = z0, jnp.zeros((), z0.dtype)
    for half, mask in _half_schedule(nets):
        z, ld = _half_update(half, mask, x, z, eps0, grad_fn, grad_x, inverse=False)
        log_det = log_det + ld
    return z, log_det


def flow_inverse(
    nets: FlowNetworks,
    x: jax.Array,
    z: jax.Array,
    grad_fn: GradientFn | None,
    grad_x: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """z₀ = f⁻¹(z; x) and log|det ∂f/∂z₀| at that z₀ (the FORWARD map's log-determinant).

    Same sign convention as ``flow_forward``, so log q = log N(z₀) − log_det − d log ε.
    """
    _check_gradient_source(nets, grad_fn, grad_x)
    if not nets.use_r and grad_x is None:
        grad_x = grad_fn(x)
    eps0 = nets.step_size / (2 * nets.num_coupling_steps)
    log_det = jnp.zeros((), z.dtype)
    for half, mask in reversed(_half_schedule(nets)):
        z, ld = _half_update(half, mask, x, z, eps0, grad_fn, grad_x, inverse=True)
        log_det = log_det + ld
    return z, log_det


def _log_normal(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z**2) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------
# Preconditioning: the flow runs in y = (x − loc) / scale
# --------------------------------------------------------------------------------------


class Preconditioner(NamedTuple):
    """Fixed affine map x = loc + S y; fix it before sampling.

    ``scale`` is S: a vector of standard deviations (diagonal, S y = s ⊙ y) or a (d, d)
    lower-triangular Cholesky factor L of a covariance estimate (dense, S y = L y). The
    maps dispatch on ``scale.ndim`` (``whitening.py``), static under jit.
    """

    loc: jax.Array
    scale: jax.Array


def identity_preconditioner(dim: int, dtype=jnp.float64) -> Preconditioner:
    return Preconditioner(jnp.zeros(dim, dtype), jnp.ones(dim, dtype))


def preconditioner_from_inverse_mass(
    inverse_mass: jax.Array, loc: jax.Array | None = None
) -> Preconditioner:
    """Scale from the inverse mass M⁻¹ = Σ; loc centres the network inputs.

    A vector M⁻¹ (variances) gives the diagonal S = √M⁻¹; a (d, d) matrix gives the dense
    S = cholesky(M⁻¹) (``whitening.scale_from_inverse_mass``).
    """
    inverse_mass = jnp.asarray(inverse_mass)
    dim = inverse_mass.shape[-1]
    dtype = inverse_mass.dtype
    loc = jnp.zeros(dim, dtype) if loc is None else jnp.asarray(loc, dtype)
    return Preconditioner(loc, whitening.scale_from_inverse_mass(inverse_mass))


def _resolve(preconditioner, x):
    if preconditioner is None:
        return identity_preconditioner(x.shape[-1], x.dtype)
    return preconditioner


def _whiten(pc, x):
    return whitening.to_white(x, pc.loc, pc.scale)


def _unwhiten(pc, y):
    return whitening.from_white(y, pc.loc, pc.scale)


def _grad_to_white(pc, grad_x):
    return whitening.grad_to_white(grad_x, pc.scale)


def _log_scale(pc):
    return whitening.log_det(pc.scale)


def _whitened_grad_fn(grad_fn, pc):
    if grad_fn is None:
        return None
    return lambda y: _grad_to_white(pc, grad_fn(_unwhiten(pc, y)))


def _propose_white(nets, key, y, grad_y_fn, grad_y):
    """y' and log q_y(y'|y), log|det ∂y'/∂z₀| in whitened coordinates."""
    z0 = jax.random.normal(key, y.shape, y.dtype)
    z, log_det_flow = flow_forward(nets, y, z0, grad_y_fn, grad_y)
    log_eps = nets.log_step_size
    d = y.shape[-1]
    y_new = y + jnp.exp(log_eps) * z
    log_det = log_det_flow + d * log_eps
    return y_new, _log_normal(z0) - log_det, log_det


def _log_q_white(nets, y_from, y_to, grad_y_fn, grad_y_from):
    """log q_y(y_to | y_from) through the inverse flow conditioned on y_from."""
    log_eps = nets.log_step_size
    z = (y_to - y_from) / jnp.exp(log_eps)
    z0, log_det_flow = flow_inverse(nets, y_from, z, grad_y_fn, grad_y_from)
    return _log_normal(z0) - log_det_flow - y_from.shape[-1] * log_eps


def proposal(
    nets: FlowNetworks,
    key: jax.Array,
    x: jax.Array,
    grad_fn: GradientFn | None,
    grad_x: jax.Array | None = None,
    preconditioner: Preconditioner | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw x' ~ q(·|x); return (x', log q(x'|x), log|det ∂x'/∂z₀|), model coordinates.

    ``grad_fn`` and ``grad_x`` are ∇log p in model coordinates (``grad_x`` at x, used by
    the variant without R instead of calling ``grad_fn``). Entropy of q(·|x) is
    ½d log(2πe) + E[log|det ∂x'/∂z₀|]; −log q(x'|x) is a one-sample estimate of it.
    """
    pc = _resolve(preconditioner, x)
    grad_y = None if grad_x is None else _grad_to_white(pc, grad_x)
    y_new, lq, log_det = _propose_white(
        nets, key, _whiten(pc, x), _whitened_grad_fn(grad_fn, pc), grad_y
    )
    log_scale = _log_scale(pc)
    return _unwhiten(pc, y_new), lq - log_scale, log_det + log_scale


def log_q(
    nets: FlowNetworks,
    x_from: jax.Array,
    x_to: jax.Array,
    grad_fn: GradientFn | None,
    grad_from: jax.Array | None = None,
    preconditioner: Preconditioner | None = None,
) -> jax.Array:
    """log q(x_to | x_from) in model coordinates, via the inverse flow conditioned on x_from.

    For the reverse density of a proposal x → x' call ``log_q(nets, x', x, ...)``: it
    pushes z_rev = (x − x')/ε through f⁻¹(·; x').
    """
    pc = _resolve(preconditioner, x_from)
    grad_y = None if grad_from is None else _grad_to_white(pc, grad_from)
    lq = _log_q_white(
        nets,
        _whiten(pc, x_from),
        _whiten(pc, x_to),
        _whitened_grad_fn(grad_fn, pc),
        grad_y,
    )
    return lq - _log_scale(pc)


def log_acceptance_ratio(logp_from, logp_to, log_q_forward, log_q_reverse) -> jax.Array:
    """log[p(x') q(x|x') / (p(x) q(x'|x))], or −inf unless every term is finite.

    A non-finite term means the proposal or its reverse density is broken (overflowing
    flow, NaN from a network or from the target); an +inf or NaN ratio would otherwise
    accept it, so it is mapped to −inf: rejected, never accepted.
    """
    terms = jnp.stack([logp_from, logp_to, log_q_forward, log_q_reverse])
    ratio = logp_to + log_q_reverse - logp_from - log_q_forward
    return jnp.where(jnp.all(jnp.isfinite(terms)) & jnp.isfinite(ratio), ratio, -jnp.inf)


# --------------------------------------------------------------------------------------
# One transition: shared by the kernel and the training objective
# --------------------------------------------------------------------------------------


class _Transition(NamedTuple):
    position: jax.Array  # proposal x'
    logdensity: jax.Array  # log p(x')
    logdensity_grad: jax.Array  # ∇log p(x') (no R) or NaN (R: not computed)
    log_q_forward: jax.Array
    log_q_reverse: jax.Array
    log_det: jax.Array
    log_ratio: jax.Array  # −inf when any term is not finite


def _transition(nets, key, position, logdensity, logdensity_grad, logdensity_fn, pc):
    grad_fn = jax.grad(logdensity_fn)
    grad_y_fn = _whitened_grad_fn(grad_fn, pc) if nets.use_r else None
    y = _whiten(pc, position)
    grad_y = None if nets.use_r else _grad_to_white(pc, logdensity_grad)
    y_new, lq_forward, log_det = _propose_white(nets, key, y, grad_y_fn, grad_y)
    x_new = _unwhiten(pc, y_new)
    if nets.use_r:
        # The inverse flow evaluates ∇U at its own points, never at x': log p(x') alone.
        logdensity_new = logdensity_fn(x_new)
        grad_new = jnp.full_like(x_new, jnp.nan)
        grad_y_new = None
    else:
        logdensity_new, grad_new = jax.value_and_grad(logdensity_fn)(x_new)
        grad_y_new = _grad_to_white(pc, grad_new)
    lq_reverse = _log_q_white(nets, y_new, y, grad_y_fn, grad_y_new)
    # Σ log s cancels in the ratio; subtract it from the reported densities only.
    log_scale = _log_scale(pc)
    lq_forward, lq_reverse = lq_forward - log_scale, lq_reverse - log_scale
    log_ratio = log_acceptance_ratio(logdensity, logdensity_new, lq_forward, lq_reverse)
    return _Transition(
        x_new, logdensity_new, grad_new, lq_forward, lq_reverse, log_det + log_scale, log_ratio
    )


# --------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------


class EntropyState(NamedTuple):
    """Position, log p there, and ∇log p there.

    The variant without R reuses ``logdensity_grad`` as the forward flow's gradient. The R
    variant never needs it and does not pay a gradient to keep it: after an accepted move
    it holds NaN (``init`` still computes it, so either variant can start from ``init``).
    """

    position: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array


class EntropyInfo(NamedTuple):
    acceptance_rate: jax.Array  # min(1, MH ratio); 0 for a non-finite proposal
    is_accepted: jax.Array
    log_q_forward: jax.Array  # log q(x'|x), model coordinates
    log_q_reverse: jax.Array  # log q(x|x')
    log_det: jax.Array  # log|det ∂x'/∂z₀|: proposal entropy = ½d log(2πe) + E[log_det]
    step_size: jax.Array  # ε (whitened coordinates)
    n_grad_evals: jax.Array  # true gradients this transition
    n_logp_evals: jax.Array  # log densities without gradient this transition
    nonfinite_reverse: jax.Array  # q(x|x') not finite: rejected
    nonfinite_proposal: jax.Array  # x', log p(x') or q(x'|x) not finite: rejected


def init(position: jax.Array, logdensity_fn: LogDensityFn) -> EntropyState:
    position = jnp.asarray(position)
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    return EntropyState(position, logdensity, grad)


def build_kernel(logdensity_fn: LogDensityFn):
    """The MH transition with the flow proposal; the variant (R or not) comes with ``nets``.

    ``kernel(key, state, nets, preconditioner=None) -> (EntropyState, EntropyInfo)``.
    """

    def kernel(
        key: jax.Array,
        state: EntropyState,
        nets: FlowNetworks,
        preconditioner: Preconditioner | None = None,
    ) -> tuple[EntropyState, EntropyInfo]:
        key_proposal, key_accept = jax.random.split(key)
        pc = _resolve(preconditioner, state.position)
        tr = _transition(
            nets,
            key_proposal,
            state.position,
            state.logdensity,
            state.logdensity_grad,
            logdensity_fn,
            pc,
        )
        accepted, acceptance_rate = mh_accept(key_accept, tr.log_ratio)
        new_state = jax.tree.map(
            lambda new, old: jnp.where(accepted, new, old),
            EntropyState(tr.position, tr.logdensity, tr.logdensity_grad),
            state,
        )
        n_grad, n_logp = grad_evals_per_transition(nets)
        nonfinite_reverse = ~jnp.isfinite(tr.log_q_reverse)
        nonfinite_proposal = (
            ~jnp.all(jnp.isfinite(tr.position))
            | ~jnp.isfinite(tr.logdensity)
            | ~jnp.isfinite(tr.log_q_forward)
        )
        info = EntropyInfo(
            acceptance_rate=acceptance_rate,
            is_accepted=accepted,
            log_q_forward=tr.log_q_forward,
            log_q_reverse=tr.log_q_reverse,
            log_det=tr.log_det,
            step_size=nets.step_size,
            n_grad_evals=jnp.asarray(n_grad, jnp.int64),
            n_logp_evals=jnp.asarray(n_logp, jnp.int64),
            nonfinite_reverse=nonfinite_reverse,
            nonfinite_proposal=nonfinite_proposal,
        )
        return new_state, info

    return kernel


# --------------------------------------------------------------------------------------
# Training objective and β controller
# --------------------------------------------------------------------------------------


class ObjectiveAux(NamedTuple):
    mean_acceptance: jax.Array  # mean of min(1, MH ratio) over batch and proposals
    mean_log_det: jax.Array  # mean log|det ∂x'/∂z₀| (entropy term, model coordinates)
    objective: jax.Array  # the maximised L, averaged
    fraction_nonfinite: jax.Array  # proposals whose MH ratio was not finite
    step_size: jax.Array
    # Each start point's first proposal and its log MH ratio (−inf when not finite), so a
    # trainer can advance its walkers by one exact MH transition at no extra cost.
    proposal: jax.Array  # (B, d)
    log_ratio: jax.Array  # (B,)


def entropy_objective(
    nets: FlowNetworks,
    key: jax.Array,
    positions: jax.Array,
    logdensity_fn: LogDensityFn,
    beta: jax.Array | float,
    preconditioner: Preconditioner | None = None,
    num_proposals: int = 1,
) -> tuple[jax.Array, ObjectiveAux]:
    """(−L averaged over ``positions`` (B, d) and ``num_proposals`` z₀ each, aux).

    L(x) = E_z₀[min(0, log MH ratio) + β log|det ∂x'/∂z₀|] (§3.3). Gradients flow through
    every ∇U term (second derivatives of log p) and through log ε; the starting points are
    data (gradient stopped). A proposal with a non-finite ratio contributes 0 acceptance
    and no gradient (its term is masked), and is counted in ``fraction_nonfinite``. Use
    with ``eqx.filter_value_and_grad(entropy_objective, has_aux=True)``.
    """
    positions = jax.lax.stop_gradient(jnp.atleast_2d(positions))
    pc = _resolve(preconditioner, positions[0])
    beta = jax.lax.stop_gradient(jnp.asarray(beta, positions.dtype))

    def one(key, x):
        if nets.use_r:
            logdensity, grad = logdensity_fn(x), None
        else:
            logdensity, grad = jax.value_and_grad(logdensity_fn)(x)

        def per_proposal(k):
            tr = _transition(nets, k, x, logdensity, grad, logdensity_fn, pc)
            finite = jnp.isfinite(tr.log_ratio) & jnp.isfinite(tr.log_det)
            accept_term = jnp.where(finite, jnp.minimum(tr.log_ratio, 0.0), 0.0)
            entropy_term = jnp.where(finite, tr.log_det, 0.0)
            acceptance = jnp.where(finite, jnp.exp(accept_term), 0.0)
            value = accept_term + beta * entropy_term
            return value, acceptance, entropy_term, ~finite, tr.position, tr.log_ratio

        return jax.vmap(per_proposal)(jax.random.split(key, num_proposals))

    keys = jax.random.split(key, positions.shape[0])
    value, acceptance, log_det, nonfinite, proposals, log_ratios = jax.vmap(one)(keys, positions)
    objective = jnp.mean(value)
    n_finite = jnp.maximum(jnp.sum(~nonfinite), 1)
    aux = ObjectiveAux(
        mean_acceptance=jnp.mean(acceptance),
        mean_log_det=jnp.sum(log_det) / n_finite,
        objective=objective,
        fraction_nonfinite=jnp.mean(nonfinite.astype(positions.dtype)),
        step_size=nets.step_size,
        proposal=proposals[:, 0],
        log_ratio=log_ratios[:, 0],
    )
    return -objective, jax.tree.map(jax.lax.stop_gradient, aux)


def beta_update(
    beta: jax.Array | float,
    mean_acceptance: jax.Array | float,
    target: float = DEFAULT_TARGET_ACCEPTANCE,
    rate: float = DEFAULT_BETA_RATE,
) -> jax.Array:
    """log β ← log β + rate · (acceptance − target).

    Above target the proposal can afford more entropy, so β (the entropy weight) grows;
    below target it shrinks. Multiplicative, so β stays positive at any scale.
    """
    return jnp.asarray(beta) * jnp.exp(rate * (jnp.asarray(mean_acceptance) - target))
