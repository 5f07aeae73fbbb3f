"""L2HMC: a learned, invertible generalisation of the leapfrog integrator with an exact MH test.

Source: D. Levy, M. D. Hoffman, J. Sohl-Dickstein, "Generalizing Hamiltonian Monte Carlo
with Neural Networks", ICLR 2018 (``algorithms.md`` §2). The equations are labelled
[U1]–[U4] (update), [J] (log-Jacobian), [MH] and [L] (loss) here and cited by label below.

The augmented state is ξ = (x, v, d): position, momentum v ~ N(0, I) and direction
d ∈ {−1, +1} drawn uniformly. One transition applies T learned leapfrog-like steps
``L^d`` followed by the flip d → −d. Each step is (with ∇U = −∇log p):

- [U1] v' = v ⊙ exp(½ε S_v(ζ₁)) − ½ε (∇U(x) ⊙ exp(ε Q_v(ζ₁)) + T_v(ζ₁)),     ζ₁ = (x, ∇U(x), t)
- [U2] x' = m̄⊙x + m⊙[x ⊙ exp(ε S_x(ζ₂)) + ε (v' ⊙ exp(ε Q_x(ζ₂)) + T_x(ζ₂))], ζ₂ = (m̄⊙x, v', t)
- [U3] x'' = m⊙x' + m̄⊙[x' ⊙ exp(ε S_x(ζ₃)) + ε (v' ⊙ exp(ε Q_x(ζ₃)) + T_x(ζ₃))], ζ₃ = (m⊙x', v', t)
- [U4] v'' = v' ⊙ exp(½ε S_v(ζ₄)) − ½ε (∇U(x'') ⊙ exp(ε Q_v(ζ₄)) + T_v(ζ₄)), ζ₄ = (x'', ∇U(x''), t)

with the time t encoded as (cos 2πt/T, sin 2πt/T) and m_t a fixed binary mask selecting
half of the coordinates. Every sub-update is a shear or an elementwise affine map whose
coefficients do not depend on the coordinates it changes, so it is invertible in closed
form and its log-Jacobian is the sum of the log scales [J]. The backward direction
L^{−1} applies the inverse sub-updates in reverse order and reverse time, hence
(F L)² = id for the flip F, and the MH test [MH]

    A(ξ'|ξ) = min(1, p(ξ') / p(ξ) · |det ∂ξ'/∂ξ|),   p(ξ) ∝ p(x) N(v; 0, I)

leaves p(x) invariant whatever the networks compute; v and d are resampled every
transition, so the chain on x alone is an exact MH chain. With all networks outputting zero
the operator is plain leapfrog (backward: leapfrog with step −ε), i.e. the untrained
kernel *is* HMC.

Training maximises the expected squared jumped distance through the loss [L]

    ℓ(ξ, ξ', A) = λ² / (δ(ξ, ξ') A) − δ(ξ, ξ') A / λ²,  δ = ‖x − x'‖²,

averaged over current walkers plus, with weight λ_b, over fresh draws from the initial
distribution (the burn-in term); the step size ε is learned as log ε.

Departures from the paper (all keep the kernel exact):

- *Whitening.* The operator runs in coordinates y with x = c + S y, taken from a short
  HMC warm-up: S = √M⁻¹ (elementwise) for a diagonal inverse mass matrix of shape (d,),
  S = L = cholesky(M⁻¹) for a dense one of shape (d, d) (``pymc_neural_steps.whitening``).
  The log-Jacobian log|det S| of this fixed map is a constant that cancels in the MH ratio,
  and with zero networks the kernel is exactly HMC with inverse mass matrix M⁻¹ (leapfrog
  in y with unit mass is leapfrog in x with mass M, the momentum being p = S⁻ᵀ v); the tests
  check both forms to 1e-12. The networks see O(1) inputs whatever the target's scale, and
  the ESJD loss measures jumps in posterior standard deviations, so no coordinate dominates
  it. Only a dense S undoes correlations and rotations (see ``docs/design-notes.md``).
- *One direction per transition.* The reference code runs both directions for every chain
  and masks one away, doubling the cost. Here each sub-update evaluates its network once
  and then selects the forward or the inverse formula elementwise (a ``where`` on cheap
  arithmetic), so a transition costs exactly T true gradients (the gradient at the current
  point is carried in the state), also under ``vmap`` where a ``lax.cond`` would run both
  branches.
- *Shared trunks.* S_x, Q_x, T_x share one MLP trunk with three heads (likewise S_v, Q_v,
  T_v), as in the reference code.

Non-finite outcomes (an overflowing network, a gradient of inf or NaN, an infinite energy)
give a log acceptance ratio of −inf: never accepted, flagged in the info.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from pymc_neural_steps import whitening
from pymc_neural_steps.kernels.hmc import DIVERGENCE_THRESHOLD

__all__ = [
    "ESJDLossAux",
    "L2HMCInfo",
    "L2HMCNetworks",
    "L2HMCState",
    "LeapfrogTrajectory",
    "build_kernel",
    "default_width",
    "esjd_loss",
    "forward",
    "init",
    "init_networks",
    "inverse",
    "sample_direction",
    "time_encoding",
    "transition",
]

# Added to δ·A in the reciprocal term of the loss: a walker that does not move costs
# λ²/JUMP_FLOOR instead of infinity (squared whitened units, i.e. posterior variances).
JUMP_FLOOR = 1e-4

LogDensityAndGrad = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


# --------------------------------------------------------------------------- networks


class _CouplingNet(eqx.Module):
    """One MLP trunk on (a, b, time) with three heads (S, Q, T), each of size ``dim``.

    The paper's S_x, Q_x, T_x (or S_v, Q_v, T_v). S and Q pass through tanh and are scaled
    by a trainable per-coordinate factor exp(coeff) (coeff starts at 0); T is linear. The
    output layer starts at exactly zero, so every head outputs 0 and the step is leapfrog.

    Written here rather than with ``nets.mlp`` because ``eqx.nn.MLP`` stores its activation
    functions as pytree leaves, which plain ``jax.jit``/``vmap`` reject; this module holds
    arrays only, so drivers can pass the networks straight through ``jit``, ``vmap`` and
    ``lax.scan``.
    """

    hidden: tuple[eqx.nn.Linear, ...]
    output: eqx.nn.Linear  # width -> 3 * dim: the S, Q and T heads stacked
    scale_log_coeff: jax.Array  # (dim,), multiplies tanh(S)
    transformation_log_coeff: jax.Array  # (dim,), multiplies tanh(Q)

    def __init__(self, dim, width, depth, *, key, zero_output=True, dtype=jnp.float64):
        keys = jax.random.split(key, depth + 1)
        sizes = [2 * dim + 2] + [width] * depth
        self.hidden = tuple(
            eqx.nn.Linear(n_in, n_out, key=k, dtype=dtype)
            for n_in, n_out, k in zip(sizes[:-1], sizes[1:], keys[:-1])
        )
        output = eqx.nn.Linear(sizes[-1], 3 * dim, key=keys[-1], dtype=dtype)
        # A select rather than an `if`, so that `zero_output` may be traced.
        self.output = eqx.tree_at(
            lambda lin: (lin.weight, lin.bias),
            output,
            (
                jnp.where(zero_output, 0.0, output.weight),
                jnp.where(zero_output, 0.0, output.bias),
            ),
        )
        self.scale_log_coeff = jnp.zeros(dim, dtype)
        self.transformation_log_coeff = jnp.zeros(dim, dtype)

    def __call__(self, a, b, time):
        # Concatenating the inputs before a linear layer equals the reference code's sum of
        # one embedding per input.
        h = jnp.concatenate([a, b, time])
        for layer in self.hidden:
            h = jax.nn.relu(layer(h))
        s, q, t = jnp.split(self.output(h), 3)
        s = jnp.exp(self.scale_log_coeff) * jnp.tanh(s)
        q = jnp.exp(self.transformation_log_coeff) * jnp.tanh(q)
        return s, q, t


class L2HMCNetworks(eqx.Module):
    """Everything L2HMC learns, plus the fixed masks: a pytree of arrays only.

    Trainable: ``x_net`` (S_x, Q_x, T_x on (masked x, v, t)), ``v_net`` (S_v, Q_v, T_v on
    (x, ∇U(x), t)) and ``log_step_size`` (log ε). Not trainable: ``masks``, a boolean array
    of shape (T, d) whose row t marks the coordinates updated first at step t. Being
    boolean, the masks are dropped by equinox's usual filter ``eqx.is_inexact_array``, so
    ``eqx.filter_value_and_grad`` and ``optax`` on ``eqx.filter(nets, eqx.is_inexact_array)``
    never touch them. (A plain ``jax.grad`` refuses boolean leaves: partition first.)
    The number of steps T is ``masks.shape[0]``.
    """

    x_net: _CouplingNet
    v_net: _CouplingNet
    log_step_size: jax.Array  # scalar
    masks: jax.Array  # bool, (num_steps, dim)

    @property
    def num_steps(self) -> int:
        return self.masks.shape[0]

    @property
    def dim(self) -> int:
        return self.masks.shape[1]

    @property
    def step_size(self) -> jax.Array:
        return jnp.exp(self.log_step_size)


def default_width(dim: int) -> int:
    """Hidden width: 2d clipped to [10, 100].

    Reproduces both of the paper's settings (10 units for its 2-d targets, 100 for the 50-d
    Gaussian). The trunk's input has 2d + 2 entries and its output 3d, so a width of about
    2d avoids a bottleneck; the cap keeps a transition (4T network calls) cheap on CPU.
    """
    return max(10, min(100, 2 * dim))


def init_networks(
    key: jax.Array,
    dim: int,
    num_steps: int = 10,
    width: int | None = None,
    depth: int = 2,
    step_size: float = 0.1,
    *,
    zero_output: bool = True,
    dtype=jnp.float64,
) -> L2HMCNetworks:
    """Fresh networks: zero outputs (the kernel is HMC with ``step_size``), random masks.

    ``step_size`` is in whitened units (posterior standard deviations once the kernel is
    given ``inverse_mass``); the training loop should pass the step size of its HMC warm-up,
    which is the same number in both parameterisations. The default 0.1 with T = 10 makes a
    trajectory about one standard deviation long. ``zero_output=False`` keeps the random
    output layers (tests of invertibility and exactness need non-zero networks).
    """
    if width is None:
        width = default_width(dim)
    nets = _build_networks(key, zero_output, dim, num_steps, width, depth, jnp.dtype(dtype))
    return eqx.tree_at(lambda n: n.log_step_size, nets, jnp.asarray(math.log(step_size), dtype))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _build_networks(key, zero_output, dim, num_steps, width, depth, dtype):
    # One compiled call: built op by op, the dozens of small random ops each compile on
    # first use, which costs seconds.
    key_x, key_v, key_masks = jax.random.split(key, 3)
    # A fixed random half per step (⌊d/2⌋ coordinates, drawn once and never trained): the
    # two position sub-updates of a step move the half and its complement, so all of x.
    ranks = jax.vmap(lambda k: jax.random.permutation(k, dim))(
        jax.random.split(key_masks, num_steps)
    )
    masks = ranks < dim // 2
    return L2HMCNetworks(
        x_net=_CouplingNet(dim, width, depth, key=key_x, zero_output=zero_output, dtype=dtype),
        v_net=_CouplingNet(dim, width, depth, key=key_v, zero_output=zero_output, dtype=dtype),
        log_step_size=jnp.zeros((), dtype),
        masks=masks,
    )


# --------------------------------------------------------------------------- operator


class LeapfrogTrajectory(NamedTuple):
    """The end of a learned-leapfrog trajectory and its summed log-Jacobian."""

    position: jax.Array
    momentum: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array
    log_jacobian: jax.Array  # log|det ∂(x', v')/∂(x, v)|
    n_grad_evals: int  # T, or T + 1 when the starting gradient was not given


def time_encoding(t: jax.Array, num_steps: int, dtype=jnp.float64) -> jax.Array:
    """(cos 2πt/T, sin 2πt/T): the step index as the networks see it (paper §4)."""
    phase = 2.0 * jnp.pi * jnp.asarray(t, dtype) / num_steps
    return jnp.stack([jnp.cos(phase), jnp.sin(phase)])


def _momentum_update(net, x, v, grad, time, eps, is_forward):
    """Half-step on v ([U1]/[U4]) or its inverse; returns (v, log-Jacobian contribution).

    The network input (x, ∇U(x), t) does not involve v, so the forward and inverse maps
    see the same coefficients: one network call serves both formulas.
    """
    s, q, t = net(x, -grad, time)
    log_scale = 0.5 * eps * s
    # −½ε(∇U ⊙ exp(εQ) + T) with ∇U = −∇log p
    shift = 0.5 * eps * (grad * jnp.exp(eps * q) - t)
    v_forward = v * jnp.exp(log_scale) + shift
    v_inverse = (v - shift) * jnp.exp(-log_scale)
    sign = jnp.where(is_forward, 1.0, -1.0)
    return jnp.where(is_forward, v_forward, v_inverse), sign * jnp.sum(log_scale)


def _position_update(net, x, v, update, time, eps, is_forward):
    """Update the coordinates marked by ``update`` given the others ([U2]/[U3]) or invert it.

    The network sees only the coordinates that stay fixed, so it returns the same values
    before and after the update and the inverse is closed-form.
    """
    s, q, t = net(jnp.where(update, 0.0, x), v, time)
    log_scale = eps * s
    shift = eps * (v * jnp.exp(eps * q) + t)
    x_forward = x * jnp.exp(log_scale) + shift
    x_inverse = (x - shift) * jnp.exp(-log_scale)
    x_new = jnp.where(update, jnp.where(is_forward, x_forward, x_inverse), x)
    sign = jnp.where(is_forward, 1.0, -1.0)
    return x_new, sign * jnp.sum(jnp.where(update, log_scale, 0.0))


def forward(
    nets: L2HMCNetworks,
    x: jax.Array,
    v: jax.Array,
    logdensity_and_grad: LogDensityAndGrad,
    direction,
    logdensity: jax.Array | None = None,
    logdensity_grad: jax.Array | None = None,
) -> LeapfrogTrajectory:
    """T learned leapfrog steps L^d from (x, v): forward for d = +1, L⁻¹ for d = −1.

    ``logdensity_and_grad(x) -> (log p(x), ∇log p(x))`` is evaluated once per step; pass
    the values at the start (``logdensity``, ``logdensity_grad``) to avoid one more call.
    ``direction`` may be traced; both directions share one pass (see module docstring).
    The operator knows nothing about whitening: it acts on whatever coordinates it gets.
    """
    num_steps = nets.num_steps
    eps = nets.step_size
    is_forward = jnp.asarray(direction) > 0
    n_grad_evals = num_steps
    if logdensity_grad is None:
        logdensity, logdensity_grad = logdensity_and_grad(x)
        n_grad_evals += 1
    elif logdensity is None:
        logdensity = jnp.zeros((), x.dtype)

    def one_step(carry, i):
        x, v, logp, grad, log_jac = carry
        # The inverse runs time backwards so that step T−1−i undoes forward step T−1−i.
        t = jnp.where(is_forward, i, num_steps - 1 - i)
        time = time_encoding(t, num_steps, x.dtype)
        mask = nets.masks[t]
        # Forward moves the m half first; the inverse must first undo the m̄ half.
        first = jnp.where(is_forward, mask, ~mask)
        v, j1 = _momentum_update(nets.v_net, x, v, grad, time, eps, is_forward)
        x, j2 = _position_update(nets.x_net, x, v, first, time, eps, is_forward)
        x, j3 = _position_update(nets.x_net, x, v, ~first, time, eps, is_forward)
        logp, grad = logdensity_and_grad(x)
        v, j4 = _momentum_update(nets.v_net, x, v, grad, time, eps, is_forward)
        return (x, v, logp, grad, log_jac + j1 + j2 + j3 + j4), None

    init_carry = (x, v, logdensity, logdensity_grad, jnp.zeros((), x.dtype))
    (x, v, logp, grad, log_jac), _ = jax.lax.scan(
        one_step, init_carry, jnp.arange(num_steps)
    )
    return LeapfrogTrajectory(x, v, logp, grad, log_jac, n_grad_evals)


def inverse(
    nets: L2HMCNetworks,
    x: jax.Array,
    v: jax.Array,
    logdensity_and_grad: LogDensityAndGrad,
    direction,
    logdensity: jax.Array | None = None,
    logdensity_grad: jax.Array | None = None,
) -> LeapfrogTrajectory:
    """The exact inverse of ``forward(..., direction)``: (L^d)⁻¹ = L^{−d}."""
    return forward(
        nets, x, v, logdensity_and_grad, -jnp.asarray(direction), logdensity, logdensity_grad
    )


# --------------------------------------------------------------------------- kernel


class L2HMCState(NamedTuple):
    """Position (original coordinates), its log density, and ∇log p there (carried)."""

    position: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array


class L2HMCInfo(NamedTuple):
    acceptance_rate: jax.Array  # min(1, exp(log acceptance ratio)) of the proposal
    is_accepted: jax.Array
    is_divergent: jax.Array  # non-finite, or −log ratio above the divergence threshold
    is_nonfinite: jax.Array  # the operator produced inf/NaN (network or target)
    energy: jax.Array  # H = −log p(x) + ½ pᵀM⁻¹p at the state the chain moves to
    energy_error: jax.Array  # H(ξ') − H(ξ), without the log-Jacobian
    log_jacobian: jax.Array  # log|det ∂ξ'/∂ξ| of the learned operator
    proposal: jax.Array  # proposed position (original coordinates)
    esjd: jax.Array  # acceptance_rate · ‖x − x'‖² in original coordinates
    direction: jax.Array  # +1 or −1
    num_steps: jax.Array
    n_grad_evals: jax.Array  # true gradients (each also gives the log density)


def init(position: jax.Array, logdensity_fn: Callable[[jax.Array], jax.Array]) -> L2HMCState:
    position = jnp.asarray(position)
    logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
    return L2HMCState(position, logdensity, grad)


def sample_direction(key: jax.Array) -> jax.Array:
    """d uniform on {−1, +1} (integer)."""
    return jnp.where(jax.random.bernoulli(key), 1, -1).astype(jnp.int32)


def _whitening(position, inverse_mass, center):
    """(c, S) of x = c + S y: S = √M⁻¹ for a vector M⁻¹, cholesky(M⁻¹) for a matrix."""
    if inverse_mass is None:
        scale = jnp.ones_like(position)
    else:
        scale = whitening.scale_from_inverse_mass(jnp.asarray(inverse_mass, position.dtype))
    center = jnp.zeros_like(position) if center is None else jnp.asarray(center)
    return center, scale


class _Proposal(NamedTuple):
    state: L2HMCState  # original coordinates
    log_accept_ratio: jax.Array  # −inf when anything is non-finite
    energy_start: jax.Array
    energy_proposal: jax.Array
    log_jacobian: jax.Array
    jump_whitened: jax.Array  # ‖y − y'‖², 0 when non-finite
    jump: jax.Array  # ‖x − x'‖², 0 when non-finite
    finite: jax.Array


def _propose(nets, state, momentum, direction, logdensity_fn, inverse_mass, center):
    """Run the operator in whitened coordinates and score the proposal [MH]."""
    center, scale = _whitening(state.position, inverse_mass, center)
    value_and_grad = jax.value_and_grad(logdensity_fn)

    def whitened_field(y):
        # log p_y(y) = log p(c + S y) + log|det S|; the constant cancels in the MH ratio.
        logp, grad = value_and_grad(whitening.from_white(y, center, scale))
        return logp, whitening.grad_to_white(grad, scale)

    y = whitening.to_white(state.position, center, scale)
    traj = forward(
        nets,
        y,
        momentum,
        whitened_field,
        direction,
        state.logdensity,
        whitening.grad_to_white(state.logdensity_grad, scale),
    )
    # Exactly where the log density was taken.
    position = whitening.from_white(traj.position, center, scale)
    grad = whitening.grad_from_white(traj.logdensity_grad, scale)
    # ½‖v‖² in whitened coordinates is ½ pᵀM⁻¹p with p = S⁻ᵀ v.
    energy_start = -state.logdensity + 0.5 * jnp.sum(momentum**2)
    energy_proposal = -traj.logdensity + 0.5 * jnp.sum(traj.momentum**2)
    finite = (
        jnp.all(jnp.isfinite(traj.position))
        & jnp.all(jnp.isfinite(traj.momentum))
        & jnp.all(jnp.isfinite(grad))
        & jnp.isfinite(traj.log_jacobian)
        & (traj.logdensity < jnp.inf)  # −inf (outside the support) is a valid rejection
        & jnp.isfinite(energy_start)
    )
    log_ratio = energy_start - energy_proposal + traj.log_jacobian
    log_ratio = jnp.where(finite & ~jnp.isnan(log_ratio), log_ratio, -jnp.inf)
    # Zero the jumps of broken proposals before they meet A = 0 (0·inf would be NaN).
    jump_w = jnp.sum((traj.position - y) ** 2)
    jump_x = jnp.sum((position - state.position) ** 2)
    return _Proposal(
        state=L2HMCState(position, traj.logdensity, grad),
        log_accept_ratio=log_ratio,
        energy_start=energy_start,
        energy_proposal=energy_proposal,
        log_jacobian=traj.log_jacobian,
        jump_whitened=jnp.where(finite, jump_w, 0.0),
        jump=jnp.where(finite, jump_x, 0.0),
        finite=finite,
    )


def transition(
    nets: L2HMCNetworks,
    state: L2HMCState,
    momentum: jax.Array,
    direction,
    log_uniform: jax.Array,
    logdensity_fn: Callable[[jax.Array], jax.Array],
    inverse_mass: jax.Array | None = None,
    center: jax.Array | None = None,
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
) -> tuple[L2HMCState, L2HMCInfo]:
    """One L2HMC transition given its random inputs; the kernel is this plus the draws.

    ``momentum`` is the whitened momentum v ~ N(0, I) (the HMC momentum is S⁻ᵀ v, S = √M⁻¹
    for a diagonal M⁻¹ of shape (d,), S = cholesky(M⁻¹) for a dense one of shape (d, d)),
    ``direction`` is ±1 and the proposal is accepted iff ``log_uniform`` < log A.
    """
    prop = _propose(nets, state, momentum, direction, logdensity_fn, inverse_mass, center)
    log_ratio = prop.log_accept_ratio
    acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accepted = log_uniform < log_ratio
    new_state = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), prop.state, state)
    num_steps = jnp.asarray(nets.num_steps, jnp.int64)
    info = L2HMCInfo(
        acceptance_rate=acceptance_rate,
        is_accepted=accepted,
        is_divergent=~prop.finite | (-log_ratio > divergence_threshold),
        is_nonfinite=~prop.finite,
        energy=jnp.where(accepted, prop.energy_proposal, prop.energy_start),
        energy_error=prop.energy_proposal - prop.energy_start,
        log_jacobian=prop.log_jacobian,
        proposal=prop.state.position,
        esjd=acceptance_rate * prop.jump,
        direction=jnp.asarray(direction, jnp.int32),
        num_steps=num_steps,
        n_grad_evals=num_steps,  # the starting gradient is carried in the state
    )
    return new_state, info


def build_kernel(
    logdensity_fn: Callable[[jax.Array], jax.Array],
    divergence_threshold: float = DIVERGENCE_THRESHOLD,
):
    """An L2HMC transition on ``logdensity_fn`` (log p of the flat vector x).

    ``kernel(key, state, nets, inverse_mass=None, center=None)``: ``inverse_mass`` (M⁻¹,
    either diagonal, shape (d,), e.g. the posterior variances from an HMC warm-up, or dense,
    shape (d, d), an estimated posterior covariance) and ``center`` define the fixed
    whitening x = center + S y (S = √M⁻¹ elementwise, or the Cholesky factor of M⁻¹) in
    which the networks were trained; they belong with the networks and must be saved with
    them. Cost: ``nets.num_steps`` gradients (plus a d × d Cholesky factorisation per
    transition in the dense case).
    """

    def kernel(
        key: jax.Array,
        state: L2HMCState,
        nets: L2HMCNetworks,
        inverse_mass: jax.Array | None = None,
        center: jax.Array | None = None,
    ) -> tuple[L2HMCState, L2HMCInfo]:
        key_momentum, key_direction, key_accept = jax.random.split(key, 3)
        position = state.position
        momentum = jax.random.normal(key_momentum, position.shape, position.dtype)
        direction = sample_direction(key_direction)
        log_uniform = jnp.log(jax.random.uniform(key_accept, dtype=position.dtype))
        return transition(
            nets,
            state,
            momentum,
            direction,
            log_uniform,
            logdensity_fn,
            inverse_mass,
            center,
            divergence_threshold,
        )

    return kernel


# --------------------------------------------------------------------------- loss


class ESJDLossAux(NamedTuple):
    """Monitoring values of ``esjd_loss`` and the walkers' proposals (to advance them)."""

    loss_walkers: jax.Array
    loss_burnin: jax.Array
    acceptance_rate: jax.Array  # mean over walkers
    esjd: jax.Array  # mean over walkers of A·‖x − x'‖², original coordinates
    esjd_whitened: jax.Array  # the same in whitened coordinates (what the loss uses)
    burnin_acceptance_rate: jax.Array
    nonfinite_fraction: jax.Array  # over walkers and burn-in draws
    proposal: L2HMCState  # per walker
    log_accept_ratio: jax.Array  # per walker: accept iff log u < this


def esjd_loss(
    nets: L2HMCNetworks,
    key: jax.Array,
    positions: jax.Array,
    burnin_positions: jax.Array | None,
    logdensity_fn: Callable[[jax.Array], jax.Array],
    scale: float = 1.0,
    burnin_weight: float = 1.0,
    inverse_mass: jax.Array | None = None,
    center: jax.Array | None = None,
) -> tuple[jax.Array, ESJDLossAux]:
    """The paper's loss [L] on a batch of walkers plus a batch of initial draws.

    For each starting point a fresh (v, d) is drawn, the learned operator proposes ξ', and

        ℓ = λ² / (δA + JUMP_FLOOR) − δA / λ²,   δ = ‖y − y'‖² (whitened),

    with A the acceptance probability, differentiable in the networks and log ε through the
    trajectory (second derivatives of log p included). The loss is mean ℓ over
    ``positions`` plus ``burnin_weight`` × mean ℓ over ``burnin_positions`` (may be None).
    ``scale`` (λ) is in posterior standard deviations. Non-finite proposals count as δA = 0,
    so the loss value is always finite; a trajectory that overflows can still make the
    gradient NaN, which the training loop must catch (e.g. ``optax.apply_if_finite``).
    A second failure mode is silent: if an update makes every proposal hopeless (A
    underflows to 0, log ratios of −1e17 were seen with λ = 0.1 and Adam at 1e-2), the
    gradient is exactly zero and training stalls at λ²/JUMP_FLOOR; watch
    ``aux.acceptance_rate`` and roll back.

    Differentiate with ``eqx.filter_value_and_grad(esjd_loss, has_aux=True)`` (the masks are
    boolean). ``aux.proposal`` / ``aux.log_accept_ratio`` let the training loop advance the
    walkers with the same proposals (an exact MH step for the current networks) without
    recomputing them.
    """
    lam2 = jnp.asarray(scale, positions.dtype) ** 2

    def one(key, x):
        state = jax.lax.stop_gradient(init(x, logdensity_fn))
        key_momentum, key_direction = jax.random.split(key)
        momentum = jax.random.normal(key_momentum, x.shape, x.dtype)
        direction = sample_direction(key_direction)
        prop = _propose(nets, state, momentum, direction, logdensity_fn, inverse_mass, center)
        acceptance = jnp.exp(jnp.minimum(prop.log_accept_ratio, 0.0))
        jump_a = prop.jump_whitened * acceptance
        ell = lam2 / (jump_a + JUMP_FLOOR) - jump_a / lam2
        return ell, acceptance, jump_a, prop.jump * acceptance, prop

    # Walkers and burn-in draws go through one vmapped trajectory: half the program to
    # compile and one batched pass instead of two.
    num_walkers = positions.shape[0]
    starts = positions if burnin_positions is None else jnp.concatenate(
        [positions, burnin_positions.astype(positions.dtype)]
    )
    ell, acc, jump_w, jump_x, prop = jax.vmap(one)(
        jax.random.split(key, starts.shape[0]), starts
    )
    walker = slice(0, num_walkers)
    loss_walkers = jnp.mean(ell[walker])
    if burnin_positions is None:
        loss_burnin = jnp.zeros((), positions.dtype)
        burnin_acc = jnp.full((), jnp.nan, positions.dtype)
    else:
        loss_burnin = jnp.mean(ell[num_walkers:])
        burnin_acc = jnp.mean(acc[num_walkers:])
    loss = loss_walkers + burnin_weight * loss_burnin
    aux = ESJDLossAux(
        loss_walkers=loss_walkers,
        loss_burnin=loss_burnin,
        acceptance_rate=jnp.mean(acc[walker]),
        esjd=jnp.mean(jump_x[walker]),
        esjd_whitened=jnp.mean(jump_w[walker]),
        burnin_acceptance_rate=burnin_acc,
        nonfinite_fraction=jnp.mean(~prop.finite),
        proposal=jax.tree.map(lambda a: a[walker], prop.state),
        log_accept_ratio=prop.log_accept_ratio[walker],
    )
    return loss, jax.tree.map(jax.lax.stop_gradient, aux)
