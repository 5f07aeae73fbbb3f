"""The short true-gradient re-warm-up (programs/rewarm.py) without a model: it runs Stan's
short schedule, counts what it spends, and re-tunes an HMC chain whose settings are wrong."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from pymc_neural_steps import adaptation
from pymc_neural_steps.programs import hmc as hmc_programs
from pymc_neural_steps.programs import rewarm as rewarms

jax.config.update("jax_enable_x64", True)


def test_it_runs_the_short_schedule_and_sums_the_stats():
    def tune(key, carry, code):
        return carry + 1, jnp.zeros(2), jnp.stack([code * 1.0, 0.0, 0.0, 3.0])

    carry, totals = rewarms.rewarm(tune, jax.random.key(0), jnp.zeros((), int))
    codes = adaptation.window_codes(rewarms.REWARM)
    assert int(carry) == rewarms.REWARM == codes.shape[0]
    assert float(totals[3]) == 3.0 * rewarms.REWARM  # e.g. n_grad_evals: the total
    assert float(totals[0]) == float(np.sum(codes))  # the codes, in order and once each
    assert list(codes).count(adaptation.SLOW_END) == 1
    assert codes[0] == adaptation.FAST and codes[-1] == adaptation.FAST


def test_it_retunes_a_chain_left_with_wrong_settings():
    scales = jnp.asarray([1.0, 10.0])
    target = SimpleNamespace(dim=2, logdensity=lambda x: -0.5 * jnp.sum((x / scales) ** 2))
    program = hmc_programs.hmc_program(target, step_size=1e-3)
    carry = program.init(jnp.asarray([0.5, -3.0]), ())
    tune = lambda k, c, code: program.tune(k, c, code, ())  # noqa: E731
    tuned, totals = rewarms.rewarm(tune, jax.random.key(1), carry)
    step_size, inverse_mass = adaptation.warmup_final(tuned.warmup)
    # The mass matrix now sees the 10x wider direction, and the step size left 1e-3 for
    # one of order one in those whitened units.
    assert float(inverse_mass[1] / inverse_mass[0]) > 10.0
    assert 0.2 < float(step_size * jnp.sqrt(jnp.min(inverse_mass))) < 3.0
    assert int(totals[3]) > rewarms.REWARM  # every trajectory's gradients counted
