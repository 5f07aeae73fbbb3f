"""Saved kernels: arrays + JSON, no pickle, refused for a model whose layout differs."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import NNgHMC, TrainedNNgHMC, io
from pymc_neural_steps._compat import group_dataset
from pymc_neural_steps.surrogate import default_spec, make_surrogate
from pymc_neural_steps.target import Layout, LayoutMismatchError, VariableLayout, build_layout

jax.config.update("jax_enable_x64", True)

LAYOUT = Layout(
    (
        VariableLayout("mu", "mu", (), 0, None),
        VariableLayout("sigma_log__", "sigma", (2,), 1, "LogTransform"),
    )
)


def kernel_tree():
    net = make_surrogate(default_spec(3, width=4), jax.random.key(0))
    net = eqx.filter(net, eqx.is_array)
    return {"net": net, "scale": np.arange(3.0), "steps": np.array([4, 5])}


def saved(tmp_path, tree=None):
    tree = kernel_tree() if tree is None else tree
    io.save_kernel(tmp_path, kind="Test", arrays=tree, layout=LAYOUT,
                   metadata={"step_size": 0.3, "spec": {"width": 4}})
    return tree


def test_round_trip_of_a_pytree_and_its_metadata(tmp_path):
    tree = saved(tmp_path)
    metadata = io.read_metadata(tmp_path, kind="Test")
    assert metadata["step_size"] == 0.3 and metadata["spec"] == {"width": 4}
    assert metadata["layout"] == LAYOUT.fingerprint()
    assert {"jax", "pymc", "numpy", "equinox"} <= set(metadata["versions"])
    loaded = io.load_arrays(tmp_path, kernel_tree(), metadata)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    # Plain files: JSON text and an npz that NumPy opens without pickle.
    assert json.loads((tmp_path / io.METADATA_FILE).read_text())["kind"] == "Test"
    with np.load(tmp_path / io.ARRAYS_FILE, allow_pickle=False) as npz:
        assert len(npz.files) == len(jax.tree.leaves(tree))


def test_wrong_kind_structure_or_shape_is_refused(tmp_path):
    saved(tmp_path)
    with pytest.raises(ValueError, match="'Test' kernel, not 'NNgHMC'"):
        io.read_metadata(tmp_path, kind="NNgHMC")
    other = kernel_tree()
    other["extra"] = np.zeros(2)
    with pytest.raises(ValueError, match="structure"):
        io.load_arrays(tmp_path, other)
    other = kernel_tree()
    other["scale"] = np.zeros(4)
    with pytest.raises(ValueError, match="shape"):
        io.load_arrays(tmp_path, other)


def test_modified_arrays_are_refused(tmp_path):
    saved(tmp_path)
    path = tmp_path / io.ARRAYS_FILE
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["a0000"] = arrays["a0000"] + 1.0
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="checksum"):
        io.load_arrays(tmp_path, kernel_tree())


def test_a_pickled_object_array_is_never_unpickled(tmp_path):
    saved(tmp_path)
    path = tmp_path / io.ARRAYS_FILE
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["a0000"] = np.array([object()], dtype=object)  # would need pickle to load
    np.savez(path, **arrays)
    metadata = io.read_metadata(tmp_path)
    metadata["arrays_sha256"] = io._sha256(path)  # a forger can fix the checksum...
    with pytest.raises(ValueError, match="allow_pickle"):  # ... but not make NumPy unpickle
        io.load_arrays(tmp_path, kernel_tree(), metadata)
    with pytest.raises(TypeError, match="numeric"):
        io.save_kernel(tmp_path / "x", kind="Test", arrays={"a": np.array([None])},
                       layout=LAYOUT, metadata={})


def test_a_different_layout_is_refused_naming_the_variable(tmp_path):
    saved(tmp_path)
    metadata = io.read_metadata(tmp_path)
    io.check_layout(metadata, LAYOUT)
    mu = LAYOUT.variables[0]
    wider = Layout((mu, VariableLayout("sigma_log__", "sigma", (3,), 1, "LogTransform")))
    with pytest.raises(LayoutMismatchError, match="'sigma_log__' has shape"):
        io.check_layout(metadata, wider)
    untransformed = Layout((mu, VariableLayout("sigma_log__", "sigma", (2,), 1, None)))
    with pytest.raises(LayoutMismatchError, match="'sigma_log__' has transform"):
        io.check_layout(metadata, untransformed)


# --- NNgHMC ---------------------------------------------------------------------------------
def small_model(shape=3, transformed=False):
    with pm.Model() as model:
        if transformed:
            pm.HalfNormal("w", 1.0, shape=shape)
        else:
            pm.Normal("w", 0.0, 1.0, shape=shape)
        pm.Normal("y", model["w"].sum(), 1.0, observed=np.array([0.5, 1.5]))
    return model


@pytest.fixture
def trained():
    model = small_model()
    surrogate = make_surrogate(default_spec(3, width=8), jax.random.key(3))
    surrogate = eqx.tree_at(lambda s: s.g_scale, surrogate, jnp.full(3, 0.1))
    return TrainedNNgHMC.from_surrogate(
        surrogate, layout=build_layout(model), step_size=0.4, inverse_mass=[1.0, 2.0, 0.5],
        path_length=1.2, report={"relative_error": 0.05, "loss": 0.01},
    )


def test_nnghmc_save_then_load_gives_identical_draws(tmp_path, trained):
    model = small_model()
    original = NNgHMC.from_trained(trained, model=model)
    original.save(tmp_path / "kernel")
    loaded = NNgHMC.load(tmp_path / "kernel", model=model)
    back = loaded._trained_start
    assert back.spec == trained.spec and back.layout == trained.layout
    assert (back.step_size, back.path_length) == (trained.step_size, trained.path_length)
    np.testing.assert_array_equal(back.inverse_mass, trained.inverse_mass)
    for a, b in zip(back.surrogate_leaves, trained.surrogate_leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    run = dict(draws=100, tune=50, chains=2, random_seed=21, progressbar=False, model=model)
    a = group_dataset(pns.sample(original, **run))["w"].values
    b = group_dataset(pns.sample(loaded, **run))["w"].values
    np.testing.assert_array_equal(a, b)


def test_nnghmc_load_refuses_another_layout_naming_the_variable(tmp_path, trained):
    NNgHMC.from_trained(trained, model=small_model()).save(tmp_path)
    with pytest.raises(LayoutMismatchError, match="'w' has shape"):
        NNgHMC.load(tmp_path, model=small_model(shape=4))
    with pytest.raises(LayoutMismatchError, match="w"):
        NNgHMC.load(tmp_path, model=small_model(transformed=True))
    # A JSON edited to claim another layout no longer matches the model either.
    meta_path = tmp_path / io.METADATA_FILE
    metadata = json.loads(meta_path.read_text())
    metadata["layout"]["variables"][0]["shape"] = [4]
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(LayoutMismatchError, match="'w' has shape"):
        NNgHMC.load(tmp_path, model=small_model())
    # ... and made to fit a 4-d model, the saved arrays do not fit its network.
    with pytest.raises(ValueError, match="shape"):
        NNgHMC.load(tmp_path, model=small_model(shape=4))


def test_nothing_to_save_before_warm_up(tmp_path):
    with pytest.raises(ValueError, match="Nothing to save"):
        NNgHMC(model=small_model()).save(tmp_path)
