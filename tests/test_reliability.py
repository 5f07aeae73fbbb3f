"""Bad settings, tampered files, reused steps and mismatched models: a clear error or a
correct result, never silently wrong draws (docs/reliability.md lists each case)."""

import json
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytest

import pymc_neural_steps as pns
from pymc_neural_steps import NNgHMC, TrainedNNgHMC, io, sampling
from pymc_neural_steps._compat import group_dataset, has_group
from pymc_neural_steps.surrogate import default_spec, make_surrogate
from pymc_neural_steps.target import build_layout, data_fingerprint
from pymc_neural_steps.validation import InvalidSettingError

QUIET = dict(progressbar=False, compute_convergence_checks=False)


def data_model(values):
    with pm.Model() as model:
        y = pm.Data("y", np.asarray(values, float))
        mu = pm.Normal("mu", 0.0, 10.0)
        pm.Normal("obs", mu, 1.0, observed=y, shape=y.shape)
    return model


# --- 1. a reused step never samples stale data -------------------------------------------
def test_data_fingerprint_follows_set_data():
    model = data_model(np.zeros(5))
    before = data_fingerprint(model)
    with model:
        pm.set_data({"y": np.zeros(5)})
        assert data_fingerprint(model) == before
        pm.set_data({"y": np.ones(5)})
        assert data_fingerprint(model) != before
        pm.set_data({"y": np.ones(7)})  # a new length too
        assert data_fingerprint(model) != before


@pytest.mark.parametrize("make_step", [lambda: pns.JaxHMC(), lambda: NNgHMC()], ids=["JaxHMC", "NNgHMC"])
def test_a_reused_step_samples_the_current_data(make_step):
    model = data_model(np.zeros(20))
    with model:
        step = make_step()
        run = dict(draws=150, tune=150, chains=1, cores=1, step=step, random_seed=1, **QUIET)
        first = pm.sample(**run)
        pm.set_data({"y": np.full(30, 5.0)})  # new values and a new length
        second = pm.sample(**run)
    # Posterior mean of mu: ~0 for the first data, ~5 (sd 0.18) for the second.
    assert abs(float(group_dataset(first)["mu"].mean())) < 1.0
    assert abs(float(group_dataset(second)["mu"].mean()) - 5.0) < 1.0


# --- 2. settings and loaded arrays are validated ---------------------------------------------
@pytest.mark.parametrize("bad", [-0.5, 0.0, float("nan"), float("inf"), 1e6])
@pytest.mark.parametrize("method", [pns.JaxHMC, NNgHMC], ids=["JaxHMC", "NNgHMC"])
def test_a_step_size_no_chain_can_move_with_is_refused(method, bad):
    with data_model(np.zeros(3)):
        with pytest.raises(InvalidSettingError, match="step_size"):
            method(step_size=bad)


def test_other_bad_settings_name_the_setting():
    with data_model(np.zeros(3)):
        for kwargs, name in [
            ({"path_length": 0.0}, "path_length"),
            ({"max_steps": 0}, "max_steps"),
            ({"target_accept": float("nan")}, "target_accept"),
        ]:
            with pytest.raises(InvalidSettingError, match=name):
                pns.JaxHMC(**kwargs)
        with pytest.raises(InvalidSettingError, match="learning_rate"):
            NNgHMC(learning_rate=-1.0)


def small_model():
    with pm.Model() as model:
        w = pm.Normal("w", 0.0, 1.0, shape=3)
        pm.Normal("y", w.sum(), 1.0, observed=np.array([0.5, 1.5]))
    return model


@pytest.fixture
def saved_nnghmc(tmp_path):
    model = small_model()
    surrogate = make_surrogate(default_spec(3, width=8), jax.random.key(3))
    surrogate = eqx.tree_at(lambda s: s.g_scale, surrogate, jnp.full(3, 0.1))
    trained = TrainedNNgHMC.from_surrogate(
        surrogate, layout=build_layout(model), step_size=0.4, inverse_mass=[1.0, 2.0, 0.5]
    )
    NNgHMC.from_trained(trained, model=model).save(tmp_path)
    return tmp_path


def edit_json(path, edit):
    meta_path = path / io.METADATA_FILE
    metadata = json.loads(meta_path.read_text())
    edit(metadata)
    meta_path.write_text(json.dumps(metadata))


def edit_array(path, index, edit):
    """Change saved array ``index`` and recompute the checksum, as a forger would."""
    arrays_path = path / io.ARRAYS_FILE
    with np.load(arrays_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = sorted(arrays)[index]
    arrays[key] = edit(arrays[key])
    np.savez(arrays_path, **arrays)
    edit_json(path, lambda m: m.update(arrays_sha256=io._sha256(arrays_path)))


@pytest.mark.parametrize("bad", [float("nan"), -0.4, 0.0, 1e9])
def test_a_saved_kernel_with_a_bad_step_size_is_refused(saved_nnghmc, bad):
    edit_json(saved_nnghmc, lambda m: m.update(step_size=bad))
    with pytest.raises(InvalidSettingError, match="step_size"):
        NNgHMC.load(saved_nnghmc, model=small_model())


def test_a_saved_kernel_with_a_negative_inverse_mass_is_refused(saved_nnghmc):
    names = [e["name"] for e in io.read_metadata(saved_nnghmc)["arrays"]]
    index = next(i for i, n in enumerate(names) if "inverse_mass" in n)
    edit_array(saved_nnghmc, index, lambda a: -a)
    with pytest.raises(InvalidSettingError, match="inverse_mass"):
        NNgHMC.load(saved_nnghmc, model=small_model())


def test_a_saved_kernel_with_nan_weights_is_refused(saved_nnghmc):
    edit_array(saved_nnghmc, 0, lambda a: np.full_like(a, np.nan))
    with pytest.raises(InvalidSettingError, match="non-finite"):
        NNgHMC.load(saved_nnghmc, model=small_model())


# --- 3. one model per result ----------------------------------------------------------------
def test_a_step_built_for_another_model_is_refused():
    a, b = data_model(np.zeros(5)), data_model(np.full(5, 3.0))
    step = pns.JaxHMC(model=a)
    with pytest.raises(ValueError, match="another model"):
        pns.sample(step, model=b, draws=10, tune=10, chains=1, **QUIET)
    pns.sample(step, model=a, draws=10, tune=10, chains=1, **QUIET)  # its own model is fine


# --- 5. Ctrl-C before the first draw keeps the warm-up ----------------------------------------
def test_ctrl_c_in_warm_up_returns_the_warm_up_made(monkeypatch):
    calls = {"n": 0}
    original = sampling._Progress.update

    def interrupting_update(self, advance, phase):
        original(self, advance, phase)
        calls["n"] += 1
        if phase == "warm-up" and calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sampling._Progress, "update", interrupting_update)
    with data_model(np.zeros(5)):
        with pytest.warns(UserWarning) as record:
            result = pns.sample(pns.JaxHMC(), draws=100, tune=100, chains=2, chunk_size=10,
                                random_seed=1, **QUIET)
    messages = [str(w.message) for w in record]
    assert messages == ["Sampling was interrupted; returning the warm-up iterations made so far."]
    assert has_group(result, "warmup_posterior")
    assert group_dataset(result, "warmup_posterior")["mu"].shape == (2, 20)
    assert group_dataset(result)["mu"].shape == (2, 0)


# --- 6. clear errors for bad arguments and damaged files ---------------------------------------
def test_chains_zero_is_refused_by_name():
    with data_model(np.zeros(5)):
        with pytest.raises(InvalidSettingError, match="chains"):
            pns.sample(pns.JaxHMC(), chains=0, draws=10, tune=10, **QUIET)


def test_a_truncated_arrays_file_is_named(saved_nnghmc):
    arrays_path = saved_nnghmc / io.ARRAYS_FILE
    arrays_path.write_bytes(arrays_path.read_bytes()[:200])
    edit_json(saved_nnghmc, lambda m: m.update(arrays_sha256=io._sha256(arrays_path)))
    with pytest.raises(io.CorruptKernelError, match="arrays.npz.*damaged or truncated"):
        NNgHMC.load(saved_nnghmc, model=small_model())
    assert not isinstance(io.CorruptKernelError("x"), zipfile.BadZipFile)


def test_a_broken_json_file_is_named(saved_nnghmc):
    meta_path = saved_nnghmc / io.METADATA_FILE
    meta_path.write_text(meta_path.read_text()[:50])
    with pytest.raises(io.CorruptKernelError, match="kernel.json is not valid JSON"):
        NNgHMC.load(saved_nnghmc, model=small_model())


# --- convergence checks in the fast driver ------------------------------------------------------
def test_the_fast_driver_logs_pm_sample_s_convergence_warnings(caplog):
    with pm.Model():
        pm.Normal("a", 0.0, 1.0)
        pm.Normal("b", 0.0, 1.0)
        pm.Normal("obs", pm.math.sum([pm.Model.get_context()["a"], pm.Model.get_context()["b"]]),
                  0.01, observed=0.0)
        step = pns.JaxHMC()
        with caplog.at_level("INFO", logger="pymc"):
            pns.sample(step, draws=100, tune=100, chains=2, random_seed=1, progressbar=False)
        assert "rhat statistic is larger than 1.01" in caplog.text or "effective sample size" in caplog.text
        caplog.clear()
        with caplog.at_level("INFO", logger="pymc"):
            pns.sample(step, draws=100, tune=100, chains=2, random_seed=1, **QUIET)
        assert "rhat" not in caplog.text and "effective sample size" not in caplog.text
