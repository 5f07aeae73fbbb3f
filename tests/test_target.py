"""The PyMC -> JAX bridge: densities, gradients, layouts and errors against PyMC itself."""

import jax
import numpy as np
import pymc as pm
import pytest

from pymc_neural_steps.target import (
    DiscreteVariableError,
    LayoutMismatchError,
    NonFiniteInitialPointError,
    build_target,
)


def mixed_model(prior_sd=1.0):
    with pm.Model() as model:
        data = pm.Data("data", np.array([0.3, -1.2, 2.0]))
        sigma = pm.HalfNormal("sigma", 1.0)
        p = pm.Beta("p", 2.0, 3.0, shape=3)
        u = pm.Uniform("u", -1.0, 3.0)
        w = pm.Dirichlet("w", np.ones(4))
        mu = pm.Normal("mu", 0.0, prior_sd, shape=(2, 2))
        pm.Deterministic("mu_sum", mu.sum() + u)
        pm.Potential("shrink", -0.5 * (p**2).sum())
        pm.Normal("y", mu.sum() * w[0], sigma, observed=data)
    return model


def evaluate(model, outs, point):
    fn = model.compile_fn(outs, inputs=model.value_vars, point_fn=False, on_unused_input="ignore")
    return fn(*[point[v.name] for v in model.value_vars])


def random_points(model, n, seed):
    rng = np.random.default_rng(seed)
    ip = model.initial_point()
    for _ in range(n):
        yield {k: v + rng.normal(size=np.shape(v)) for k, v in ip.items()}


def test_logdensity_and_gradient_match_pymc():
    model = mixed_model()
    target = build_target(model)
    logp_pymc = model.compile_logp()
    dlogp_pymc = model.compile_dlogp()
    value_and_grad = jax.jit(jax.value_and_grad(target.logdensity))
    for point in random_points(model, 5, seed=0):
        x = target.layout.ravel(point)
        value, grad = value_and_grad(x)
        np.testing.assert_allclose(value, logp_pymc(point), rtol=1e-12)
        np.testing.assert_allclose(grad, dlogp_pymc(point), rtol=1e-10, atol=1e-12)


def test_density_splits_into_prior_likelihood_and_potential():
    model = mixed_model()
    target = build_target(model)
    point = next(random_points(model, 1, seed=1))
    x = target.layout.ravel(point)
    prior = evaluate(model, model.logp(vars=model.free_RVs, jacobian=True), point)
    lik = evaluate(model, model.logp(vars=model.observed_RVs), point)
    np.testing.assert_allclose(target.log_prior(x), prior, rtol=1e-12)
    np.testing.assert_allclose(target.log_likelihood(x), lik, rtol=1e-12)
    total = target.log_prior(x) + target.log_likelihood(x) + target.log_potential(x)
    np.testing.assert_allclose(total, target.logdensity(x), rtol=1e-12)


def test_layout_ravel_unravel_and_constrained_values():
    model = mixed_model()
    target = build_target(model)
    layout = target.layout
    assert layout.dim == 1 + 3 + 1 + 3 + 4
    transforms = [v.transform for v in layout.variables]
    assert transforms[-1] is None and all(transforms[:-1])
    assert "Log" in transforms[0] and "Interval" in transforms[2] and "Simplex" in transforms[3]
    point = next(random_points(model, 1, seed=2))
    x = layout.ravel(point)
    back = layout.unravel(x)
    for name, value in back.items():
        np.testing.assert_array_equal(value, point[name])
    values = target.constrained(x)
    assert set(values) == {"sigma", "p", "u", "w", "mu", "mu_sum"}
    outs = model.replace_rvs_by_values([model["sigma"], model["w"], model["mu_sum"]])
    sigma, w, mu_sum = evaluate(model, outs, point)
    np.testing.assert_allclose(values["sigma"], sigma, rtol=1e-12)
    np.testing.assert_allclose(values["w"], w, rtol=1e-12)
    np.testing.assert_allclose(values["mu_sum"], mu_sum, rtol=1e-12)
    # Batched draws keep their leading axes.
    assert layout.unravel(np.stack([x, x]))["mu"].shape == (2, 2, 2)


def test_data_containers_are_read_when_the_target_is_built():
    model = mixed_model()
    before = build_target(model)
    x = before.initial_position
    with model:
        pm.set_data({"data": np.array([5.0, 6.0, 7.0])})
    after = build_target(model)
    assert float(before.logdensity(x)) != float(after.logdensity(x))
    np.testing.assert_allclose(after.logdensity(x), model.compile_logp()(model.initial_point()))


def test_layout_check_names_the_variable_that_differs():
    base = build_target(mixed_model()).layout
    base.check_compatible(build_target(mixed_model(prior_sd=10.0)).layout)  # priors only
    with pm.Model() as other:
        pm.HalfNormal("sigma", 1.0)
        pm.Beta("p", 2.0, 3.0, shape=4)
    with pytest.raises(LayoutMismatchError, match="'p_logodds__'.*shape"):
        build_target(other).layout.check_compatible(
            {"variables": [{"name": "sigma_log__", "shape": [], "transform": "LogTransform"},
                           {"name": "p_logodds__", "shape": [3], "transform": "LogOddsTransform"}]}
        )
    with pm.Model() as renamed:
        pm.Normal("sigma", 1.0)
    with pytest.raises(LayoutMismatchError, match="'sigma_log__' is missing"):
        base.check_compatible(build_target(renamed).layout)


def test_discrete_variables_are_refused_by_name():
    with pm.Model() as model:
        k = pm.Poisson("k", 3.0)
        pm.Normal("z", k, 1.0)
    with pytest.raises(DiscreteVariableError, match=r"\['k'\]"):
        build_target(model)
    with pytest.raises(DiscreteVariableError, match="k"):
        build_target(model, vars=[model["k"]])


def test_other_variables_enter_as_extra_inputs():
    with pm.Model() as model:
        k = pm.Poisson("k", 3.0)
        z = pm.Normal("z", k, 1.0)
    target = build_target(model, vars=[z])
    assert target.layout.extra_names == ("k",)
    logp = model.compile_logp()
    np.testing.assert_allclose(
        target.logdensity(np.array([0.5]), np.array(2)), logp({"z": 0.5, "k": 2}), rtol=1e-12
    )


def test_non_finite_initial_point_names_the_variable():
    with pm.Model() as model:
        pm.Normal("fine", 0.0, 1.0)
        b = pm.HalfNormal("b", 1.0)
        pm.Potential("broken", pm.math.log(-b))
    with pytest.raises(NonFiniteInitialPointError, match="'broken'"):
        build_target(model).check_initial_point()
