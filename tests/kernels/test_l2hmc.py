"""The L2HMC kernel: HMC at zero networks, exact inverse and log-Jacobian, exactness with
random networks, a learnable loss, honest gradient counts. No PyMC needed."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pymc_neural_steps.kernels import hmc, l2hmc

jax.config.update("jax_enable_x64", True)


def quartic_logdensity(x):
    """A smooth non-Gaussian target, so ∇log p is nonlinear along the trajectory."""
    a = jnp.linspace(0.5, 2.0, x.shape[0])
    return -0.5 * jnp.sum(a * x**2) - 0.125 * jnp.sum(x**4) + 0.3 * x[0] * x[-1]


# Most tests share one shape so that the networks' constructor compiles once.
DIM, NUM_STEPS = 3, 4


def random_networks(seed, dim=DIM, num_steps=NUM_STEPS, step_size=0.3):
    """Untrained networks with non-zero outputs and non-trivial tanh factors."""
    nets = l2hmc.init_networks(
        jax.random.key(seed), dim, num_steps, step_size=step_size, zero_output=False
    )
    rng = np.random.default_rng(seed)
    for net in ("x_net", "v_net"):
        for coeff in ("scale_log_coeff", "transformation_log_coeff"):
            nets = eqx.tree_at(
                lambda n: getattr(getattr(n, net), coeff),
                nets,
                jnp.asarray(0.5 + 0.3 * rng.standard_normal(dim)),
            )
    return nets


def hamiltonian(logdensity_fn, x, p, inverse_mass):
    return -logdensity_fn(x) + 0.5 * jnp.sum(p**2 * inverse_mass)


calls = []  # one entry per evaluation of counted_logdensity, at run time


def counted_logdensity(x):
    jax.debug.callback(lambda: calls.append(1))
    return quartic_logdensity(x)


counted_kernel = jax.jit(l2hmc.build_kernel(counted_logdensity))


# ---------------------------------------------------------------------- 1. zero nets = HMC


def test_zero_networks_are_hmc_both_directions():
    nets = l2hmc.init_networks(jax.random.key(0), DIM, NUM_STEPS, step_size=0.9)
    step_size = nets.step_size
    inverse_mass = jnp.array([0.5, 2.0, 0.8])
    center = jnp.array([0.3, -0.2, 0.1])  # irrelevant at zero networks, up to rounding
    params = hmc.HMCParams(step_size, inverse_mass, NUM_STEPS)
    hmc_kernel = hmc.build_kernel(quartic_logdensity)
    field = jax.value_and_grad(quartic_logdensity)

    @jax.jit
    def compare(key, x0, direction):
        hmc_state = hmc.init(x0, quartic_logdensity)
        state = l2hmc.init(x0, quartic_logdensity)
        # L2HMC is fed the very draws the HMC kernel makes from `key`.
        hmc_result = hmc_kernel(key, hmc_state, params)
        key_momentum, key_accept = jax.random.split(key)
        v = jax.random.normal(key_momentum, (DIM,), jnp.float64)  # whitened: v = p·√M⁻¹
        log_u = jnp.log(jax.random.uniform(key_accept, dtype=jnp.float64))
        result = l2hmc.transition(nets, state, v, direction, log_u, quartic_logdensity,
                                  inverse_mass, center)
        # Leapfrog with step −ε from (x, v) is leapfrog with +ε from (x, −v): the reference
        # for both directions is HMC's own leapfrog started from momentum d·p.
        p = v / jnp.sqrt(inverse_mass)
        x1, p1, g1, lp1 = hmc.leapfrog(field, x0, direction * p, hmc_state.gradient, step_size,
                                       inverse_mass, NUM_STEPS, hmc_state.logdensity)
        energy_error = hamiltonian(quartic_logdensity, x1, p1, inverse_mass) - hamiltonian(
            quartic_logdensity, x0, p, inverse_mass
        )
        reference = (x1, g1, lp1, energy_error, log_u < -energy_error)
        return hmc_result, result, reference

    tol = dict(rtol=1e-12, atol=1e-12)
    outcomes = set()
    for seed in range(8):
        x0 = jnp.asarray(np.random.default_rng(seed).standard_normal(DIM))
        for direction in (1, -1):
            (hmc_new, hmc_info), (new, info), reference = compare(
                jax.random.key(seed), x0, direction
            )
            x1, g1, lp1, energy_error, accept = reference
            np.testing.assert_allclose(info.proposal, x1, **tol)
            np.testing.assert_allclose(info.energy_error, energy_error, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(
                info.acceptance_rate, jnp.exp(jnp.minimum(-energy_error, 0.0)), **tol
            )
            assert bool(info.is_accepted) == bool(accept)
            assert float(info.log_jacobian) == 0.0
            if info.is_accepted:
                np.testing.assert_allclose(new.logdensity_grad, g1, **tol)
                np.testing.assert_allclose(new.logdensity, lp1, **tol)
            outcomes.add(bool(info.is_accepted))
            if direction == 1:  # the very HMC transition, same key and state
                np.testing.assert_allclose(new.position, hmc_new.position, **tol)
                np.testing.assert_allclose(new.logdensity, hmc_new.logdensity, **tol)
                np.testing.assert_allclose(new.logdensity_grad, hmc_new.gradient, **tol)
                np.testing.assert_allclose(info.acceptance_rate, hmc_info.acceptance_rate, **tol)
                np.testing.assert_allclose(info.energy, hmc_info.energy, **tol)
                assert bool(info.is_accepted) == bool(hmc_info.is_accepted)
    assert outcomes == {True, False}, "the comparison should cover accepts and rejects"


# A dense inverse mass matrix (an estimated posterior covariance): the kernel then whitens
# with its Cholesky factor L, x = c + L y, and the HMC momentum is p = L⁻ᵀ v.
DENSE_INVERSE_MASS = jnp.array([[0.9, 0.5, -0.2], [0.5, 1.6, 0.3], [-0.2, 0.3, 0.7]])
DENSE_CENTER = jnp.array([0.3, -0.2, 0.1])


def dense_leapfrog(x, p, step_size, num_steps):
    """Leapfrog in x with the dense mass matrix M = DENSE_INVERSE_MASS⁻¹, written out."""
    field = jax.grad(quartic_logdensity)
    for _ in range(num_steps):
        p = p + 0.5 * step_size * field(x)
        x = x + step_size * DENSE_INVERSE_MASS @ p
        p = p + 0.5 * step_size * field(x)
    return x, p


def dense_hamiltonian(x, p):
    return -quartic_logdensity(x) + 0.5 * p @ DENSE_INVERSE_MASS @ p


def test_zero_networks_with_a_dense_whitening_are_hmc_with_that_mass_matrix():
    nets = l2hmc.init_networks(jax.random.key(0), DIM, NUM_STEPS, step_size=0.6)
    chol = np.linalg.cholesky(np.asarray(DENSE_INVERSE_MASS))
    transition = jax.jit(
        lambda x0, v, direction, log_u: l2hmc.transition(
            nets, l2hmc.init(x0, quartic_logdensity), v, direction, log_u, quartic_logdensity,
            DENSE_INVERSE_MASS, DENSE_CENTER)
    )
    tol = dict(rtol=1e-12, atol=1e-12)
    outcomes = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x0, v = jnp.asarray(rng.standard_normal(DIM)), jnp.asarray(rng.standard_normal(DIM))
        log_u = jnp.log(rng.uniform())
        p = jnp.asarray(np.linalg.solve(chol.T, np.asarray(v)))  # p = L⁻ᵀ v
        for direction in (1, -1):
            new, info = transition(x0, v, direction, log_u)
            # Direction −1 is leapfrog with −ε: HMC's leapfrog from momentum −p.
            x1, p1 = dense_leapfrog(x0, direction * p, float(nets.step_size), NUM_STEPS)
            energy_error = dense_hamiltonian(x1, p1) - dense_hamiltonian(x0, p)
            np.testing.assert_allclose(info.proposal, x1, **tol)
            np.testing.assert_allclose(info.energy_error, energy_error, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(
                info.acceptance_rate, jnp.exp(jnp.minimum(-energy_error, 0.0)), **tol
            )
            np.testing.assert_allclose(info.esjd, info.acceptance_rate * jnp.sum((x1 - x0) ** 2),
                                       **tol)
            assert bool(info.is_accepted) == bool(log_u < -energy_error)
            assert float(info.log_jacobian) == 0.0
            if info.is_accepted:
                np.testing.assert_allclose(new.position, x1, **tol)
                np.testing.assert_allclose(new.logdensity_grad,
                                           jax.grad(quartic_logdensity)(x1), **tol)
            outcomes.add(bool(info.is_accepted))
    assert outcomes == {True, False}, "the comparison should cover accepts and rejects"


def test_dense_whitening_is_reversible_and_its_log_jacobian_is_the_operators():
    # The whole proposal in ORIGINAL coordinates, (x, p) -> (x', p') with p = L⁻ᵀ v: its
    # log|det| must equal the operator's log-Jacobian (the whitening's |det L| and the
    # momentum's |det L|⁻¹ cancel), running it back from (x', p') with −d must return
    # (x, p), and the MH log ratios of the two moves must be opposite (detailed balance).
    dim = DIM
    nets = random_networks(4, step_size=0.4)
    chol = jnp.linalg.cholesky(DENSE_INVERSE_MASS)
    field = jax.value_and_grad(quartic_logdensity)

    def white_field(y):
        logp, grad = field(DENSE_CENTER + chol @ y)
        return logp, chol.T @ grad

    def operator(z, direction):
        x, p = z[:dim], z[dim:]
        y = jax.scipy.linalg.solve_triangular(chol, x - DENSE_CENTER, lower=True)
        out = l2hmc.forward(nets, y, chol.T @ p, white_field, direction)
        p_new = jax.scipy.linalg.solve_triangular(chol.T, out.momentum, lower=False)
        return jnp.concatenate([DENSE_CENTER + chol @ out.position, p_new]), out.log_jacobian

    @jax.jit
    def check(z0, direction):
        z1, log_jac = operator(z0, direction)
        sign, logdet = jnp.linalg.slogdet(jax.jacfwd(lambda z: operator(z, direction)[0])(z0))
        z2, log_jac_back = operator(z1, -direction)
        # The kernel's own proposal and log ratio, forward and back (u = −inf: accept).
        x0, p0, x1, p1 = z0[:dim], z0[dim:], z1[:dim], z1[dim:]
        start, back = l2hmc.init(x0, quartic_logdensity), l2hmc.init(x1, quartic_logdensity)
        _, info = l2hmc.transition(nets, start, chol.T @ p0, direction, -jnp.inf,
                                   quartic_logdensity, DENSE_INVERSE_MASS, DENSE_CENTER)
        _, info_back = l2hmc.transition(nets, back, chol.T @ p1, -direction, -jnp.inf,
                                        quartic_logdensity, DENSE_INVERSE_MASS, DENSE_CENTER)
        return z1, z2, sign, logdet, log_jac, log_jac_back, info, info_back

    z0 = jnp.asarray(np.random.default_rng(5).standard_normal(2 * dim))
    for direction in (1, -1):
        z1, z2, sign, logdet, log_jac, log_jac_back, info, info_back = check(z0, direction)
        assert float(jnp.sum((z1 - z0)[:dim] ** 2)) > 1e-2 and abs(float(log_jac)) > 1e-2
        assert float(sign) != 0.0
        np.testing.assert_allclose(log_jac, logdet, rtol=0, atol=1e-10)
        np.testing.assert_allclose(z2, z0, rtol=0, atol=1e-10)
        np.testing.assert_allclose(log_jac_back, -log_jac, rtol=0, atol=1e-10)
        np.testing.assert_allclose(info.proposal, z1[:dim], rtol=0, atol=1e-10)
        np.testing.assert_allclose(info_back.proposal, z0[:dim], rtol=0, atol=1e-10)
        np.testing.assert_allclose(info.log_jacobian, log_jac, rtol=0, atol=1e-10)
        ratio = -info.energy_error + info.log_jacobian
        ratio_back = -info_back.energy_error + info_back.log_jacobian
        np.testing.assert_allclose(ratio_back, -ratio, rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            info.energy_error,
            dense_hamiltonian(z1[:dim], z1[dim:]) - dense_hamiltonian(z0[:dim], z0[dim:]),
            rtol=0, atol=1e-10,
        )


# ---------------------------------------------------------------------- 2. exact inverse


def test_forward_then_inverse_returns_the_start_with_random_networks():
    nets = random_networks(1)
    field = jax.value_and_grad(quartic_logdensity)
    rng = np.random.default_rng(2)
    x0, v0 = jnp.asarray(rng.standard_normal(DIM)), jnp.asarray(rng.standard_normal(DIM))

    @jax.jit
    def round_trip(direction):
        out = l2hmc.forward(nets, x0, v0, field, direction)
        back = l2hmc.inverse(nets, out.position, out.momentum, field, direction,
                             out.logdensity, out.logdensity_grad)
        return out, back

    for direction in (1, -1):
        out, back = round_trip(direction)
        assert int(out.n_grad_evals) == NUM_STEPS + 1  # no starting gradient given
        assert int(back.n_grad_evals) == NUM_STEPS
        assert float(jnp.sum((out.position - x0) ** 2)) > 1e-2  # it did move
        assert abs(float(out.log_jacobian)) > 1e-2  # and the networks matter
        np.testing.assert_allclose(back.position, x0, atol=1e-10, rtol=0)
        np.testing.assert_allclose(back.momentum, v0, atol=1e-10, rtol=0)
        np.testing.assert_allclose(back.log_jacobian, -out.log_jacobian, atol=1e-10)
        np.testing.assert_allclose(back.logdensity, quartic_logdensity(x0), atol=1e-10)


# ---------------------------------------------------------------------- 3. log-Jacobian


def test_log_jacobian_equals_log_det_of_jacfwd():
    dim = DIM
    nets = random_networks(4, step_size=0.4)
    field = jax.value_and_grad(quartic_logdensity)
    z0 = jnp.asarray(np.random.default_rng(5).standard_normal(2 * dim))

    @jax.jit
    def both(direction):
        def operator(z):  # (x, v) -> (x', v'), the starting gradient computed from x
            out = l2hmc.forward(nets, z[:dim], z[dim:], field, direction)
            return jnp.concatenate([out.position, out.momentum])

        sign, logdet = jnp.linalg.slogdet(jax.jacfwd(operator)(z0))
        return sign, logdet, l2hmc.forward(nets, z0[:dim], z0[dim:], field, direction)

    for direction in (1, -1):
        sign, logdet, out = both(direction)
        assert float(sign) != 0.0
        assert abs(float(logdet)) > 1e-2
        np.testing.assert_allclose(out.log_jacobian, logdet, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- 4. exactness

MEAN = np.array([1.0, -2.0])
COV = np.array([[2.0, 1.2], [1.2, 1.0]])
PREC = np.linalg.inv(COV)


def gaussian_logdensity(x):
    r = x - MEAN
    return -0.5 * r @ PREC @ r


def batch_means_z(samples, truth, batches_per_chain=2):
    """z-score of the mean of ``samples`` (chains, draws) against ``truth``.

    MCSE from batch means: each chain is cut into ``batches_per_chain`` contiguous batches
    and all batch means are treated as i.i.d. Many independent chains with few, long
    batches each: random networks can create regions the chain leaves only rarely, and a
    few long chains then give batch means that look independent but are not (seen while
    writing this test: |z| ≈ 6 for a kernel whose one-step stationarity checks out).
    """
    chains, draws = samples.shape
    size = draws // batches_per_chain
    means = samples[:, : size * batches_per_chain].reshape(chains, -1, size).mean(-1).ravel()
    mcse = means.std(ddof=1) / np.sqrt(means.size)
    return (means.mean() - truth) / mcse


@pytest.mark.parametrize("inverse_mass", [
    # Deliberately imperfect whitenings, to exercise them rather than make them trivial:
    # diagonal, and dense with the wrong sign of correlation.
    [1.5, 0.7],
    [[1.5, -0.5], [-0.5, 0.7]],
], ids=["diagonal", "dense"])
def test_random_networks_sample_the_target_exactly(inverse_mass):
    # The shape of the SCG test's networks below, so the constructor compiles once for both.
    # Dropping the log-Jacobian from the MH ratio gives |z| ≈ 6-12 here: the test has power.
    dim, num_steps, num_chains, num_draws = 2, 10, 256, 400
    nets = random_networks(6, dim, num_steps, step_size=0.1)
    inverse_mass = jnp.asarray(inverse_mass)
    center = jnp.array([0.7, -1.5])
    kernel = l2hmc.build_kernel(gaussian_logdensity)

    @jax.jit
    def run(key, nets):
        key_init, key_run = jax.random.split(key)
        # Start from exact draws: the chains are stationary from the first draw.
        x0 = MEAN + jax.random.normal(key_init, (num_chains, dim)) @ np.linalg.cholesky(COV).T
        states = jax.vmap(l2hmc.init, in_axes=(0, None))(x0, gaussian_logdensity)

        def one_draw(states, key):
            keys = jax.random.split(key, num_chains)
            states, info = jax.vmap(kernel, in_axes=(0, 0, None, None, None))(
                keys, states, nets, inverse_mass, center
            )
            return states, (states.position, info.acceptance_rate, info.log_jacobian)

        _, out = jax.lax.scan(one_draw, states, jax.random.split(key_run, num_draws))
        return out

    positions, acceptance, log_jacobian = run(jax.random.key(7), nets)
    positions = np.asarray(positions).transpose(1, 0, 2)  # (chains, draws, dim)
    assert 0.2 < float(acceptance.mean()) < 0.99
    assert float(jnp.abs(log_jacobian).mean()) > 0.02  # the networks are far from zero
    r = positions - MEAN
    statistics = {
        "mean x0": (positions[..., 0], MEAN[0]),
        "mean x1": (positions[..., 1], MEAN[1]),
        "var x0": (r[..., 0] ** 2, COV[0, 0]),
        "var x1": (r[..., 1] ** 2, COV[1, 1]),
        "cov": (r[..., 0] * r[..., 1], COV[0, 1]),
    }
    z = {name: batch_means_z(x, truth) for name, (x, truth) in statistics.items()}
    assert all(abs(v) < 4.0 for v in z.values()), z


def test_non_finite_networks_never_move_the_chain():
    nets = l2hmc.init_networks(jax.random.key(8), DIM, NUM_STEPS)
    nets = eqx.tree_at(lambda n: n.x_net.output.bias, nets, jnp.full(3 * DIM, jnp.nan, jnp.float64))
    state = l2hmc.init(jnp.array([0.1, 0.2, 0.3]), quartic_logdensity)
    for seed in range(4):
        new, info = counted_kernel(jax.random.key(seed), state, nets)
        assert not bool(info.is_accepted)
        assert bool(info.is_nonfinite) and bool(info.is_divergent)
        assert float(info.acceptance_rate) == 0.0 and float(info.esjd) == 0.0
        for a, b in zip(new, state):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- 5. the loss learns

THETA = np.pi / 4
ROTATION = np.array([[np.cos(THETA), -np.sin(THETA)], [np.sin(THETA), np.cos(THETA)]])
SCG_COV = ROTATION @ np.diag([1e2, 1e-1]) @ ROTATION.T
SCG_PREC = np.linalg.inv(SCG_COV)
SCG_CHOL = np.linalg.cholesky(SCG_COV)


def scg_logdensity(x):
    return -0.5 * x @ SCG_PREC @ x


def test_loss_and_gradients_are_finite_and_training_increases_esjd():
    dim, num_walkers, num_train_steps = 2, 32, 150
    inverse_mass = jnp.asarray(np.diag(SCG_COV))  # what a diagonal warm-up would find
    # The paper's ε = 0.1 in x, expressed in whitened units (both variances are 50.05).
    step_size = 0.1 / float(np.sqrt(SCG_COV[0, 0]))
    nets = l2hmc.init_networks(jax.random.key(1), dim, num_steps=10, step_size=step_size)
    loss_fn = functools.partial(
        l2hmc.esjd_loss, logdensity_fn=scg_logdensity, scale=1.0, burnin_weight=1.0,
        inverse_mass=inverse_mass,
    )
    value_and_grad = eqx.filter_value_and_grad(loss_fn, has_aux=True)
    optimizer = optax.adam(1e-2)

    def initial_draws(key, n):  # the paper's initial distribution, N(0, I)
        return jax.random.normal(key, (n, dim))

    exact = jnp.asarray(np.random.default_rng(10).standard_normal((512, dim)) @ SCG_CHOL.T)

    @jax.jit
    def evaluate(nets):  # mean A·‖x − x'‖² from exact draws, same randomness each time
        return loss_fn(nets, jax.random.key(11), exact, None)

    @jax.jit
    def train(nets, key):
        def step(carry, key):
            nets, opt_state, walkers = carry
            key_loss, key_burnin, key_accept = jax.random.split(key, 3)
            burnin = initial_draws(key_burnin, num_walkers)
            (loss, aux), grads = value_and_grad(nets, key_loss, walkers, burnin)
            grads = eqx.filter(grads, eqx.is_inexact_array)
            finite = jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), grads)
            updates, opt_state = optimizer.update(grads, opt_state)
            nets = eqx.apply_updates(nets, updates)
            # Advance the walkers with the loss's own proposals (an MH step).
            log_u = jnp.log(jax.random.uniform(key_accept, (num_walkers,)))
            accept = log_u < aux.log_accept_ratio
            walkers = jnp.where(accept[:, None], aux.proposal.position, walkers)
            return (nets, opt_state, walkers), (loss, finite, grads.log_step_size)

        key_walkers, key_steps = jax.random.split(key)
        opt_state = optimizer.init(eqx.filter(nets, eqx.is_inexact_array))
        carry = (nets, opt_state, initial_draws(key_walkers, num_walkers))
        (nets, _, _), out = jax.lax.scan(step, carry, jax.random.split(key_steps, num_train_steps))
        return nets, out

    _, before = evaluate(nets)
    trained, (losses, finite, grad_log_step_size) = train(nets, jax.random.key(101))
    _, after = evaluate(trained)
    # Networks that output NaN still give a finite loss (every proposal counts as δA = 0).
    nan_bias = jnp.full(3 * dim, jnp.nan, jnp.float64)
    broken = eqx.tree_at(lambda n: n.v_net.output.bias, nets, nan_bias)
    loss, aux = evaluate(broken)
    assert np.isfinite(float(loss)) and float(aux.nonfinite_fraction) == 1.0
    # Finite loss and finite gradients for every trainable leaf at every step.
    assert bool(jnp.all(jnp.isfinite(losses)))
    finite_leaves = jax.tree.leaves(finite)
    assert len(finite_leaves) == len(jax.tree.leaves(eqx.filter(nets, eqx.is_inexact_array)))
    assert all(bool(jnp.all(f)) for f in finite_leaves)
    assert float(jnp.abs(grad_log_step_size[0])) > 0.0
    # The untrained kernel is HMC with the paper's step size; training must beat it clearly
    # (about 20x on this seed; 3x leaves room for platform rounding).
    assert float(after.esjd) > 3.0 * float(before.esjd), (before.esjd, after.esjd)
    assert float(after.acceptance_rate) > 0.3


# ---------------------------------------------------------------------- 6. honest counts


def test_gradient_count_is_num_steps_per_transition():
    nets = random_networks(15, step_size=0.2)
    calls.clear()
    state = l2hmc.init(jnp.array([0.2, -0.1, 0.4]), counted_logdensity)
    jax.effects_barrier()
    assert len(calls) == 1
    directions = set()
    for seed in range(6):
        calls.clear()
        state, info = counted_kernel(jax.random.key(seed), state, nets)
        jax.effects_barrier()
        assert len(calls) == NUM_STEPS == int(info.n_grad_evals)
        directions.add(int(info.direction))
    assert directions == {-1, 1}
