"""NeuralStep's interface for the fast driver (model, chain_program, finish_warmup) and its
host hooks, on a tiny model: nothing sampled."""

import numpy as np
import pymc as pm

from pymc_neural_steps import JaxHMC
from pymc_neural_steps.programs.base import COMMON_STATS
from pymc_neural_steps.programs.hmc import HMC_STATS
from pymc_neural_steps.steps.base import NeuralStep


def data_model(values):
    with pm.Model() as model:
        y = pm.Data("y", np.asarray(values, float))
        mu = pm.Normal("mu", 0.0, 10.0)
        pm.Normal("obs", mu, 1.0, observed=y)
    return model


def test_chain_program_is_built_for_the_models_current_data():
    model = data_model([0.0, 1.0, 2.0])
    step = JaxHMC(model=model)
    assert step.model is model
    target, program = step.chain_program()
    assert target.dim == 1 and program.stat_specs == COMMON_STATS + HMC_STATS
    with model:
        pm.set_data({"y": np.zeros(3)})
    moved, _ = step.chain_program()
    assert moved.data_key != target.data_key


def test_finish_warmup_counts_training_time_and_reaches_the_hook():
    class Recording(JaxHMC):
        def _tuned(self, carry, *, batched):
            self.seen = (carry, batched)

    step = Recording(model=data_model([1.0]))
    step.finish_warmup("carry", batched=True, training_time=1.5)
    step.finish_warmup("later", batched=False, training_time=0.5)
    assert step.training_time == 2.0 and step.seen == ("later", False)


def test_progress_bar_hooks():
    columns, stats = NeuralStep._progressbar_config(3)
    assert len(columns) == 3 and stats["divergences"] == [0, 0, 0]
    (update,) = NeuralStep._make_progressbar_update_functions()
    shown = update({"diverging": True, "acceptance_rate": 0.5, "n_grad_evals": 7})
    assert shown == {"divergences": 1, "acceptance_rate": 0.5, "n_grad_evals": 7, "failing": True}
