"""What NNgHMC tells the user when its surrogate is not used for the draws: why, with the
acceptances that were measured (``programs/nnghmc.py`` makes the decisions)."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["fallback_message"]


def _mean(values) -> float:
    with warnings.catch_warnings():  # nanmean of all-NaN: nothing was measured
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def _gate_reason(gate) -> str:
    learned, hmc = _mean(gate.learned_score), _mean(gate.hmc_score)
    if np.all(gate.learned_resolved):
        return (
            f"on pilots from the same warm-up positions the surrogate mixed slower than "
            f"true-gradient HMC ({learned:.3g} against {hmc:.3g} ESS per true gradient in "
            "the slowest direction)"
        )
    return (
        "on pilots from the same warm-up positions the surrogate's autocorrelation did not "
        "die out (it accepted its moves but did not travel: ESS per true gradient at most "
        f"{learned:.3g}, against {hmc:.3g} for true-gradient HMC)"
    )


def fallback_message(report, passed, final_checked, tolerance, *, trained_start: bool, gate=None):
    """The warning for chains that draw with the true gradient (None when every chain
    draws with the surrogate). ``report``: the carry's report, one row per chain;
    ``gate``: the mixing gate's (``programs/nnghmc.mixing_gate``), one row per chain."""
    if passed.all():
        return None
    surrogate, true = _mean(report.accept_surrogate), _mean(report.accept_true)
    if trained_start:
        return (
            "NNgHMC: the trained surrogate does not fit this model's posterior, so the "
            "rest of warm-up and the draws used the true gradient (exact, at HMC's "
            "cost). Checked on this posterior, its trajectories were accepted with "
            f"mean probability {surrogate:.2f} against {true:.2f} on the true gradient "
            f"(tolerance {tolerance}): the posterior lies outside the region the "
            "surrogate was trained on (e.g. a prior moved far from the original "
            "posterior). Train a new NNgHMC() on this model to get the speed-up back."
        )
    if gate is not None and np.any(gate.decided & ~gate.use_learned) and not trained_start:
        reason = _gate_reason(gate)
    elif final_checked.all():
        reason = (
            "the surrogate passed its checks in warm-up but failed the last one, at the "
            "step size and path length of the draws (trajectories from the chains' final "
            f"positions accepted with mean probability {surrogate:.2f} against {true:.2f} "
            f"on the true gradient, tolerance {tolerance})"
        )
    elif int(report.trainings.max()) == 0:
        reason = (
            "there was nothing to train on (tune=0, or a warm-up too short to record "
            "trajectories and train: use tune >= 300)"
        )
    else:
        reason = (
            f"the surrogate's acceptance stayed below that of the true gradient minus "
            f"{tolerance} (last assessment: {surrogate:.2f} vs {true:.2f} after "
            f"{int(report.trainings.max())} training runs; held-out relative gradient "
            f"error {_mean(report.relative_error):.3g})"
        )
    return (
        f"NNgHMC samples with the true gradient: {reason}. The draws are exact either "
        "way; only the speed-up is lost."
    )
