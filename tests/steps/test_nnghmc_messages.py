"""NNgHMC's fallback warning (steps/_nnghmc_messages.py), one case per reason."""

from types import SimpleNamespace

import numpy as np

from pymc_neural_steps.steps._nnghmc_messages import fallback_message


def report(trainings=2, surrogate=0.4, true=0.9):
    return SimpleNamespace(trainings=np.array([trainings]), accept_surrogate=np.array([surrogate]),
                           accept_true=np.array([true]), relative_error=np.array([np.nan]))


def message(passed=False, final=False, trained_start=False, **kwargs):
    return fallback_message(report(**kwargs), np.array([passed]), np.array([final]), 0.1,
                            trained_start=trained_start)


def test_no_message_when_the_surrogate_draws():
    assert message(passed=True) is None


def test_each_reason_names_what_was_measured():
    assert "failed the last one" in message(final=True) and "0.40 against 0.90" in message(final=True)
    assert "nothing to train on" in message(trainings=0)
    stayed = message()
    assert "stayed below" in stayed and "after 2 training runs" in stayed and "nan" in stayed
    swapped = message(trained_start=True)
    assert "does not fit this model's posterior" in swapped and "0.40 against 0.90" in swapped


def test_a_gate_veto_says_what_the_pilots_measured():
    def gate(resolved):
        return SimpleNamespace(decided=np.array([True]), use_learned=np.array([False]),
                               learned_score=np.array([0.004]), hmc_score=np.array([0.02]),
                               learned_resolved=np.array([resolved]))

    args = (report(), np.array([False]), np.array([True]), 0.1)
    slower = fallback_message(*args, trained_start=False, gate=gate(True))
    assert "mixed slower than true-gradient HMC" in slower and "0.004 against 0.02" in slower
    stuck = fallback_message(*args, trained_start=False, gate=gate(False))
    assert "did not die out" in stuck and "at most 0.004" in stuck
    # a gate that let the surrogate through leaves the acceptance reasons in place
    passed_gate = SimpleNamespace(**{**vars(gate(True)), "use_learned": np.array([True])})
    assert "failed the last one" in fallback_message(*args, trained_start=False, gate=passed_gate)
