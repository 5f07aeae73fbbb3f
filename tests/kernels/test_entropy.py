"""Tests of the proposal-entropy sampler's kernel (``kernels/entropy.py``); no PyMC.

Whatever the networks are, the flow must be invertible, its log-determinant must be the
Jacobian's, both proposal densities must be the change-of-variables densities and the MH
chain must target p exactly. At zero networks the proposal must be MALA. The objective
must be trainable and actually raise the proposal entropy.

Compiling is most of the cost here (XLA on a shared CPU), so tests that can share one
compiled program do: same network structure (same key → same static masks), networks
passed as jit arguments (``FlowNetworks`` is a pytree of arrays).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

jax.config.update("jax_enable_x64", True)

from pymc_neural_steps import whitening as W  # noqa: E402
from pymc_neural_steps.kernels import entropy as E  # noqa: E402

BOTH_VARIANTS = pytest.mark.parametrize("use_r", [True, False], ids=["with_R", "without_R"])


def randomize(nets: E.FlowNetworks, seed: int, scale: float) -> E.FlowNetworks:
    """Every trainable leaf except log ε perturbed by ``scale`` · N(0, 1): a generic flow.

    NumPy draws: JAX's RNG would compile one program per leaf shape.
    """
    rng = np.random.default_rng(seed)
    params, static = eqx.partition(nets, eqx.is_inexact_array)
    params = jax.tree.map(lambda leaf: leaf + scale * rng.standard_normal(leaf.shape), params)
    return eqx.tree_at(lambda n: n.log_step_size, eqx.combine(params, static), nets.log_step_size)


def non_gaussian_logp(x):
    # The gradient varies in direction and size, so MALA's drift is a real test.
    return -0.5 * jnp.sum(x**2) - 0.05 * jnp.sum(x**4) + 0.3 * x[0] * x[1] + jnp.sin(x[-1])


def non_gaussian_grad_numpy(x):
    """∇ of ``non_gaussian_logp`` by hand, so the MALA reference shares no code with JAX."""
    x = np.asarray(x)
    g = -x - 0.2 * x**3
    g[0] += 0.3 * x[1]
    g[1] += 0.3 * x[0]
    g[-1] += np.cos(x[-1])
    return g


def as_cholesky(scale):
    """S as a matrix: diag(s) for a vector of standard deviations, L itself for a matrix."""
    scale = np.asarray(scale)
    return np.diag(scale) if scale.ndim == 1 else scale


def mala_log_q(x_from, x_to, eps, scale):
    """log N(x_to; x_from + ½ε² Σ∇log p(x_from), ε² Σ), Σ = S Sᵀ: MALA with M = Σ⁻¹.

    Written with NumPy from the covariance alone (no whitening code), for a diagonal
    (S = diag(s)) or dense (S = L) preconditioner.
    """
    chol = as_cholesky(scale)
    cov = chol @ chol.T
    mean = x_from + 0.5 * eps**2 * cov @ non_gaussian_grad_numpy(x_from)
    r = x_to - mean
    _, logdet = np.linalg.slogdet(eps**2 * cov)
    return -0.5 * r @ np.linalg.solve(eps**2 * cov, r) - 0.5 * logdet - 0.5 * len(r) * np.log(
        2 * np.pi
    )


def random_preconditioner(seed, dim, dense=False):
    rng = np.random.default_rng(seed)
    loc = jnp.asarray(0.3 * rng.standard_normal(dim))
    diagonal = np.exp(0.5 * rng.standard_normal(dim))
    if not dense:
        return E.Preconditioner(loc=loc, scale=jnp.asarray(diagonal))
    # A lower-triangular factor with strong off-diagonal terms: a rotated, correlated Σ.
    chol = np.tril(0.3 * rng.standard_normal((dim, dim)), -1) + np.diag(diagonal)
    return E.Preconditioner(loc=loc, scale=jnp.asarray(chol))


# --------------------------------------------------------------------------------------
# One compiled report of a proposal, shared by the MALA, change-of-variables and
# non-finite tests: proposal, both densities, the kernel's own view, and the same
# densities evaluated directly by change of variables with a jacfwd Jacobian.
# --------------------------------------------------------------------------------------

DIM = 4
X0 = jnp.array([0.4, -1.1, 0.8, 0.2])
GRAD_FN = jax.grad(non_gaussian_logp)
KERNEL = E.build_kernel(non_gaussian_logp)


def small_nets(use_r, step_size=0.37):
    # N = 2 checks that ε₀ = ε/(2N) is the constant making the zero flow MALA's drift.
    return E.init_networks(
        jax.random.key(0), DIM, num_coupling_steps=2, width=16, step_size=step_size, use_r=use_r
    )


@jax.jit
def proposal_report(nets, pc, key):
    x = X0

    def white(x):
        return W.to_white(x, pc.loc, pc.scale)

    def grad_white(g):
        return W.grad_to_white(g, pc.scale)

    def whitened_grad(y):
        return grad_white(GRAD_FN(W.from_white(y, pc.loc, pc.scale)))

    def position_from_base(x_from, z0):
        # The whole proposal map in model coordinates: x_from + ε S f(z₀; y_from).
        y_from = white(x_from)
        z, _ = E.flow_forward(nets, y_from, z0, whitened_grad, grad_white(GRAD_FN(x_from)))
        return W.from_white(y_from + nets.step_size * z, pc.loc, pc.scale)

    def direct_log_det(x_from, z0):
        return jnp.linalg.slogdet(jax.jacfwd(lambda z: position_from_base(x_from, z))(z0))[1]

    # The kernel proposes with split(key)[0]: use it here too, so that x_new IS the
    # kernel's proposal and its info must report exactly the densities computed here.
    key_proposal = jax.random.split(key)[0]
    x_new, lq_forward, log_det = E.proposal(nets, key_proposal, x, GRAD_FN, preconditioner=pc)
    z0 = jax.random.normal(key_proposal, (DIM,), x.dtype)
    # The flow itself, in whitened coordinates: forward, then inverse.
    y, grad_y = white(x), grad_white(GRAD_FN(x))
    z, flow_log_det = E.flow_forward(nets, y, z0, whitened_grad, grad_y)
    z0_back, flow_log_det_inverse = E.flow_inverse(nets, y, z, whitened_grad, grad_y)
    lq_reverse = E.log_q(nets, x_new, x, GRAD_FN, preconditioner=pc)
    # The reverse by hand: invert the flow at x', check it maps back to x.
    y_new = white(x_new)
    z_rev = (white(x) - y_new) / nets.step_size
    z0_rev, _ = E.flow_inverse(nets, y_new, z_rev, whitened_grad, grad_white(GRAD_FN(x_new)))
    new_state, info = KERNEL(key, E.init(x, non_gaussian_logp), nets, pc)
    return dict(
        x_new=x_new,
        z0=z0,
        lq_forward=lq_forward,
        lq_reverse=lq_reverse,
        log_det=log_det,
        direct_log_det=direct_log_det(x, z0),
        flow_log_det=flow_log_det,
        flow_log_det_inverse=flow_log_det_inverse,
        z=z,
        z0_back=z0_back,
        z0_rev=z0_rev,
        direct_log_det_reverse=direct_log_det(x_new, z0_rev),
        round_trip=position_from_base(x_new, z0_rev),
        info=info,
        new_state=new_state,
    )


# --------------------------------------------------------------------------------------
# 1. Zero networks: MALA, in both directions, with and without preconditioning
# --------------------------------------------------------------------------------------


@BOTH_VARIANTS
def test_zero_networks_are_mala(use_r):
    eps = 0.37
    nets = small_nets(use_r, step_size=eps)
    key = jax.random.key(2)
    x = np.asarray(X0)
    for pc in [
        E.identity_preconditioner(DIM),
        random_preconditioner(1, DIM),
        random_preconditioner(1, DIM, dense=True),  # preconditioned MALA with a dense Σ
    ]:
        r = jax.tree.map(np.asarray, proposal_report(nets, pc, key))
        s = np.asarray(pc.scale)
        chol = as_cholesky(s)
        mean = x + 0.5 * eps**2 * chol @ chol.T @ non_gaussian_grad_numpy(x)
        np.testing.assert_allclose(r["x_new"], mean + eps * chol @ r["z0"], rtol=0, atol=1e-12)
        assert abs(r["lq_forward"] - mala_log_q(x, r["x_new"], eps, s)) < 1e-12
        assert abs(r["lq_reverse"] - mala_log_q(r["x_new"], x, eps, s)) < 1e-12
        assert abs(r["log_det"] - np.sum(np.log(eps * np.diagonal(chol)))) < 1e-12
        # The kernel's MH test uses these densities.
        info = r["info"]
        assert abs(info.log_q_forward - mala_log_q(x, r["x_new"], eps, s)) < 1e-12
        assert abs(info.log_q_reverse - mala_log_q(r["x_new"], x, eps, s)) < 1e-12
        assert int(info.n_grad_evals) == E.grad_evals_per_transition(nets)[0]


# --------------------------------------------------------------------------------------
# 2.–4. Invertibility, log-determinant, change of variables — random networks
# --------------------------------------------------------------------------------------


def random_report(use_r, dense=False):
    nets = randomize(small_nets(use_r, step_size=0.6), seed=102, scale=0.3)
    # Seed 11 for the dense factor: a reverse density of moderate size (|log q| ~ 1e3),
    # so the 1e-10 absolute tolerances below stay meaningful.
    pc = random_preconditioner(11 if dense else 7, DIM, dense=dense)
    return nets, pc, jax.tree.map(np.asarray, proposal_report(nets, pc, jax.random.key(9)))


# Diagonal and dense preconditioners, with R; dense without R.
REPORT_CASES = pytest.mark.parametrize(
    "use_r,dense",
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["with_R", "without_R", "with_R_dense", "without_R_dense"],
)


@REPORT_CASES
def test_flow_inverse_inverts_forward(use_r, dense):
    nets, pc, r = random_report(use_r, dense)
    mala_z = r["z0"] + 0.5 * float(nets.step_size) * np.asarray(
        W.grad_to_white(GRAD_FN(X0), pc.scale)
    )
    assert np.max(np.abs(r["z"] - mala_z)) > 1e-2  # the networks really act
    np.testing.assert_allclose(r["z0_back"], r["z0"], rtol=0, atol=1e-10)
    assert abs(r["flow_log_det_inverse"] - r["flow_log_det"]) < 1e-10


@REPORT_CASES
def test_log_det_is_log_abs_det_jacobian(use_r, dense):
    nets, pc, r = random_report(use_r, dense)
    # log|det ∂x'/∂z₀| by jacfwd of the whole proposal map (model coordinates) ...
    assert abs(r["log_det"] - r["direct_log_det"]) < 1e-10
    # ... and the flow's own term: it minus d log ε + log|det S| (slogdet, not W.log_det).
    constant = DIM * float(nets.log_step_size) + float(
        np.linalg.slogdet(as_cholesky(pc.scale))[1]
    )
    assert abs(r["flow_log_det"] - (r["direct_log_det"] - constant)) < 1e-10
    assert abs(r["flow_log_det"]) > 0.1  # a non-trivial Jacobian


def test_flow_inverse_in_one_dimension():
    # d = 1: the second half of each coupling step owns no coordinate and is skipped.
    nets = randomize(
        E.init_networks(jax.random.key(1), 1, num_coupling_steps=2, width=8, use_r=True),
        seed=101,
        scale=0.3,
    )
    grad_fn = jax.grad(non_gaussian_logp)
    x, z0 = jnp.array([0.3]), jnp.array([-1.2])

    @jax.jit
    def round_trip(nets):
        z, ld = E.flow_forward(nets, x, z0, grad_fn)
        jac = jax.jacfwd(lambda z0: E.flow_forward(nets, x, z0, grad_fn)[0])(z0)
        return z, ld, E.flow_inverse(nets, x, z, grad_fn), jnp.log(jnp.abs(jac[0, 0]))

    z, ld, (z0_back, ld_inverse), ld_jacfwd = round_trip(nets)
    assert E.grad_evals_per_transition(nets) == (4, 1)
    np.testing.assert_allclose(z0_back, z0, rtol=0, atol=1e-10)
    assert abs(ld - ld_inverse) < 1e-10 and abs(ld - ld_jacfwd) < 1e-10 and abs(ld) > 0.05


@REPORT_CASES
def test_densities_match_change_of_variables(use_r, dense):
    """q(x'|x), q(x|x') vs log N(z₀) − log|det ∂x'/∂z₀| (jacfwd, model coordinates)."""
    nets, pc, r = random_report(use_r, dense)
    assert abs(r["lq_forward"] - (E._log_normal(r["z0"]) - r["direct_log_det"])) < 1e-10
    # Reverse: z0_rev (inverse flow at x' from z_rev = (x − x')/ε) maps back to x, and
    # q(x|x') is the change-of-variables density of that map at z0_rev.
    np.testing.assert_allclose(r["round_trip"], X0, rtol=0, atol=1e-10)
    direct_reverse = E._log_normal(r["z0_rev"]) - r["direct_log_det_reverse"]
    assert abs(r["lq_reverse"] - direct_reverse) < 1e-10
    assert abs(r["lq_reverse"] - r["lq_forward"]) > 1e-3  # the proposal is not symmetric
    # The kernel's MH test uses exactly these densities.
    # Same computation in a different XLA program: equal to float64 rounding, relative to
    # the densities' size (they reach |log q| ~ 1e3 in the dense case).
    np.testing.assert_allclose(r["info"].log_q_forward, r["lq_forward"], rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(r["info"].log_q_reverse, r["lq_reverse"], rtol=1e-13, atol=1e-12)


# --------------------------------------------------------------------------------------
# 5. Exactness with random (untrained) networks
# --------------------------------------------------------------------------------------

GAUSS_MEAN = jnp.array([1.0, -2.0])
GAUSS_COV = jnp.array([[1.0, 0.7 * 2.0], [0.7 * 2.0, 4.0]])
GAUSS_PREC = jnp.linalg.inv(GAUSS_COV)


def correlated_gaussian_logp(x):
    r = x - GAUSS_MEAN
    return -0.5 * r @ GAUSS_PREC @ r


def batch_means_z_scores(values, truth, num_batches=10):
    """z = (mean − truth)/MCSE, MCSE from batch means within chains, pooled over chains.

    ``values``: (chains, draws, k). Chains start at exact draws (stationary), so every
    batch mean has the same expectation; batches ≫ autocorrelation time are ~independent.
    """
    chains, draws, k = values.shape
    batches = values[:, : draws - draws % num_batches].reshape(chains, num_batches, -1, k)
    batch_means = batches.mean(axis=2).reshape(-1, k)
    mcse = batch_means.std(axis=0, ddof=1) / np.sqrt(batch_means.shape[0])
    return (values.mean(axis=(0, 1)) - truth) / mcse


@pytest.mark.parametrize(
    "use_r,preconditioned",
    [(True, True), (False, False), (False, "dense")],
    ids=["with_R_diag", "without_R", "without_R_dense"],
)
def test_exact_with_random_networks(use_r, preconditioned):
    nets = randomize(
        E.init_networks(jax.random.key(3), 2, width=16, step_size=0.9, use_r=use_r),
        seed=103,
        scale=0.2,
    )
    if preconditioned == "dense":
        # A dense factor that does not match GAUSS_COV (any fixed one is exact).
        pc = E.Preconditioner(loc=jnp.array([0.5, -1.0]), scale=jnp.array([[0.8, 0.0], [1.2, 1.1]]))
    elif preconditioned:
        pc = E.Preconditioner(loc=jnp.array([0.5, -1.0]), scale=jnp.array([0.8, 1.5]))
    else:
        pc = None
    kernel = E.build_kernel(correlated_gaussian_logp)
    chains, draws = 32, 2500

    @jax.jit
    def run(nets, key):
        k_start, k_run = jax.random.split(key)
        chol = jnp.linalg.cholesky(GAUSS_COV)
        start = GAUSS_MEAN + jax.random.normal(k_start, (chains, 2)) @ chol.T
        states = jax.vmap(lambda x: E.init(x, correlated_gaussian_logp))(start)

        def step(states, key):
            keys = jax.random.split(key, chains)
            states, info = jax.vmap(lambda k, s: kernel(k, s, nets, pc))(keys, states)
            return states, (states.position, info.is_accepted, info.nonfinite_reverse)

        return jax.lax.scan(step, states, jax.random.split(k_run, draws))[1]

    positions, accepted, nonfinite = run(nets, jax.random.key(11))
    positions = np.asarray(positions).transpose(1, 0, 2)  # (chains, draws, 2)
    acceptance = float(np.mean(accepted))
    assert 0.2 < acceptance < 0.99, acceptance
    assert not np.any(nonfinite)

    centred = positions - np.asarray(GAUSS_MEAN)
    functions = np.concatenate(
        [positions, centred**2, (centred[..., 0] * centred[..., 1])[..., None]], axis=-1
    )
    truth = np.concatenate(
        [np.asarray(GAUSS_MEAN), np.diag(np.asarray(GAUSS_COV)), [float(GAUSS_COV[0, 1])]]
    )
    z = batch_means_z_scores(functions, truth)
    assert np.all(np.abs(z) < 4.0), (z, acceptance)


# --------------------------------------------------------------------------------------
# 6. The objective: finite, differentiable, and training raises the entropy
# --------------------------------------------------------------------------------------

SCG_ROT = jnp.array([[1.0, -1.0], [1.0, 1.0]]) / jnp.sqrt(2.0)
SCG_COV = SCG_ROT @ jnp.diag(jnp.array([1e2, 1e-1])) @ SCG_ROT.T
SCG_PREC = jnp.linalg.inv(SCG_COV)
SCG_CHOL = jnp.linalg.cholesky(SCG_COV)
# The diagonal preconditioner a warm-up would estimate; it cannot undo the π/4 rotation.
SCG_PC = E.preconditioner_from_inverse_mass(jnp.diag(SCG_COV))


def scg_logp(x):
    return -0.5 * x @ SCG_PREC @ x


def scg_draws(key, n):
    return jax.random.normal(key, (n, 2)) @ SCG_CHOL.T


def scg_nets(step_size=0.03):
    # One network structure (same key → same masks) for every SCG test, so the costly
    # second-order program below is compiled once per session.
    return E.init_networks(jax.random.key(14), 2, width=32, step_size=step_size)


@jax.jit
def scg_objective_and_grad(nets, key, beta):
    # FlowNetworks is a pytree of arrays: plain jax.jit / jax.grad, no equinox filtering.
    k_positions, k_objective = jax.random.split(key)
    objective = jax.value_and_grad(E.entropy_objective, has_aux=True)
    return objective(nets, k_objective, scg_draws(k_positions, 64), scg_logp, beta, SCG_PC)


@jax.jit
def scg_evaluate(nets, key):
    return E.entropy_objective(nets, key, scg_draws(key, 2048), scg_logp, 0.0, SCG_PC)[1]


def assert_finite_gradient(nets, grads, use_r):
    leaves = jax.tree_util.tree_leaves(grads)
    assert len(leaves) == len(jax.tree_util.tree_leaves(nets))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # Every kind of parameter is trained: S/Q/T trunk, R (when present), scales and ε.
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    assert float(jnp.abs(grads.log_step_size)) > 0
    if use_r:
        assert float(jnp.max(jnp.abs(grads.halves[0].r.weights[0]))) > 0


def test_objective_and_gradient_are_finite_with_r():
    nets = randomize(scg_nets(step_size=0.05), seed=105, scale=0.2)
    (value, aux), grads = scg_objective_and_grad(nets, jax.random.key(13), 0.5)
    assert jnp.isfinite(value) and 0 < aux.mean_acceptance <= 1 and aux.fraction_nonfinite == 0
    assert_finite_gradient(nets, grads, use_r=True)


def test_objective_and_gradient_are_finite_without_r():
    nets = randomize(
        E.init_networks(jax.random.key(4), 3, width=16, step_size=0.5, use_r=False),
        seed=104,
        scale=0.2,
    )
    positions = jax.random.normal(jax.random.key(12), (8, 3))
    objective = jax.jit(
        jax.value_and_grad(E.entropy_objective, has_aux=True), static_argnums=(3, 6)
    )
    (value, aux), grads = objective(
        nets, jax.random.key(13), positions, non_gaussian_logp, 0.5, None, 2
    )
    assert jnp.isfinite(value) and 0 < aux.mean_acceptance <= 1 and aux.fraction_nonfinite == 0
    assert_finite_gradient(nets, grads, use_r=False)


def test_training_raises_entropy_at_matched_acceptance():
    """A few hundred Adam steps on the 2-d strongly correlated Gaussian (L2HMC's SCG).

    Walkers are exact draws (what the training buffer converges to). Under the diagonal
    preconditioner MALA is stuck with steps the size of the narrow direction; the flow
    can learn to stretch along the wide one. Compared at matched acceptance.
    """
    target_acceptance = 0.75
    nets = scg_nets()
    optimizer = optax.adam(3e-3)

    @jax.jit
    def apply(nets, grads, opt_state):
        updates, opt_state = optimizer.update(grads, opt_state, nets)
        return optax.apply_updates(nets, updates), opt_state

    opt_state, beta = optimizer.init(nets), 1.0
    objectives = []
    for key in jax.random.split(jax.random.key(15), 400):
        (_, aux), grads = scg_objective_and_grad(nets, key, beta)
        nets, opt_state = apply(nets, grads, opt_state)
        beta = E.beta_update(beta, aux.mean_acceptance, target_acceptance)
        objectives.append(aux.objective)
    assert np.all(np.isfinite(np.asarray(objectives)))

    aux_trained = scg_evaluate(nets, jax.random.key(16))
    acc_trained = float(aux_trained.mean_acceptance)
    assert abs(acc_trained - target_acceptance) < 0.15, acc_trained

    # MALA (zero networks) at the largest step whose acceptance matches the trained one.
    best_mala_entropy = -np.inf
    for log_eps in np.linspace(np.log(0.005), np.log(2.0), 30):
        aux = scg_evaluate(scg_nets(step_size=float(np.exp(log_eps))), jax.random.key(17))
        if float(aux.mean_acceptance) >= acc_trained - 0.02:
            best_mala_entropy = max(best_mala_entropy, float(aux.mean_log_det))
    gain = float(aux_trained.mean_log_det) - best_mala_entropy
    assert gain > 1.0, (gain, acc_trained, float(beta))


# --------------------------------------------------------------------------------------
# 7. Non-finite reverse densities are rejected and counted
# --------------------------------------------------------------------------------------


@jax.custom_jvp
def logp_with_broken_gradient(x):
    return -0.5 * jnp.sum(x**2)


@logp_with_broken_gradient.defjvp
def _broken_jvp(primals, tangents):
    # Finite density everywhere, NaN gradient for x₀ > 0.5: a proposal landing there has
    # a finite log p(x') but a reverse flow (which needs ∇U(x')) that is NaN.
    (x,), (dx,) = primals, tangents
    grad = jnp.where(x[0] > 0.5, jnp.nan, -x)
    return logp_with_broken_gradient(x), grad @ dx


def test_nonfinite_reverse_density_is_rejected_and_counted():
    nets = E.init_networks(jax.random.key(18), 2, width=16, step_size=1.5, use_r=False)
    kernel = E.build_kernel(logp_with_broken_gradient)
    state = E.init(jnp.array([-0.5, 0.0]), logp_with_broken_gradient)
    keys = jax.random.split(jax.random.key(19), 400)
    new, info = jax.jit(jax.vmap(lambda k: kernel(k, state, nets)))(keys)
    broken = np.asarray(info.nonfinite_reverse)
    assert 20 < broken.sum() < 380  # some proposals break, some do not
    assert not np.any(np.asarray(info.nonfinite_proposal))  # x', log p(x'), q(x'|x) are fine
    assert not np.any(np.asarray(info.is_accepted)[broken])
    assert np.all(np.asarray(info.acceptance_rate)[broken] == 0.0)
    stuck = np.asarray(new.position)[broken]
    np.testing.assert_array_equal(stuck, np.tile(state.position, (len(stuck), 1)))
    assert np.any(np.asarray(info.is_accepted)[~broken])  # the healthy ones still move


def test_nan_network_is_rejected_and_counted():
    # NaN in the second half-step's output bias: z, x', both densities are NaN.
    nets = small_nets(use_r=True)
    nan_bias = jnp.full(3 * DIM, jnp.nan, jnp.float64)  # float64, not weak: same compile
    nets = eqx.tree_at(lambda n: n.halves[1].sqt.biases[-1], nets, nan_bias)
    r = proposal_report(nets, E.identity_preconditioner(DIM), jax.random.key(21))
    info = r["info"]
    assert bool(info.nonfinite_proposal) and bool(info.nonfinite_reverse)
    assert not bool(info.is_accepted) and float(info.acceptance_rate) == 0.0
    np.testing.assert_array_equal(r["new_state"].position, X0)
    assert np.isfinite(float(r["new_state"].logdensity))


@pytest.mark.parametrize("bad", [jnp.inf, -jnp.inf, jnp.nan])
def test_log_acceptance_ratio_rejects_any_nonfinite_term(bad):
    # An +inf reverse density would otherwise mean certain acceptance.
    for position in range(4):
        terms = [-1.0, -2.0, -0.5, -0.7]
        terms[position] = bad
        assert E.log_acceptance_ratio(*map(jnp.asarray, terms)) == -jnp.inf
    assert jnp.isclose(E.log_acceptance_ratio(-1.0, -2.0, -0.5, -0.7), -1.2)


# --------------------------------------------------------------------------------------
# Bookkeeping: gradient counts, β controller, defaults
# --------------------------------------------------------------------------------------


@BOTH_VARIANTS
@pytest.mark.parametrize("num_coupling_steps", [1, 3])
def test_gradient_evaluations_are_counted_honestly(use_r, num_coupling_steps):
    """Count the target evaluations in the traced transition (tracing only, no compile)."""
    calls = []

    def counted_logp(x):
        calls.append(1)
        return non_gaussian_logp(x)

    nets = E.init_networks(
        jax.random.key(22), DIM, num_coupling_steps=num_coupling_steps, width=8, use_r=use_r
    )
    kernel = E.build_kernel(counted_logp)
    state = E.EntropyState(X0, jnp.zeros(()), jnp.zeros(DIM))
    jax.make_jaxpr(lambda k, s: kernel(k, s, nets))(jax.random.key(0), state)
    n_grad, n_logp = E.grad_evals_per_transition(nets)
    assert n_grad + n_logp == len(calls)
    assert (n_grad, n_logp) == ((4 * num_coupling_steps, 1) if use_r else (1, 0))


def test_beta_update_moves_toward_target():
    assert E.beta_update(1.0, 0.95, target=0.9) > 1.0
    assert E.beta_update(1.0, 0.5, target=0.9) < 1.0
    assert E.beta_update(2.0, 0.9, target=0.9) == 2.0
    assert jnp.isclose(E.beta_update(1.0, 0.8, target=0.9, rate=0.5), math.exp(-0.05))


def test_defaults():
    nets = E.init_networks(jax.random.key(23), 64)
    assert nets.num_coupling_steps == 1 and nets.use_r and nets.dim == 64
    assert np.isclose(float(nets.step_size), 64 ** (-1 / 6))
    assert E.grad_evals_per_transition(nets) == (4, 1)
    assert sum(nets.masks[0]) == 32
    # Every output layer starts at zero: the untrained proposal is MALA.
    for half in nets.halves:
        for net in (half.sqt, half.r):
            assert not np.any(np.asarray(net.weights[-1]))
            assert not np.any(np.asarray(net.biases[-1]))
