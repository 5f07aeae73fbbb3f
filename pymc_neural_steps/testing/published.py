"""The German credit logistic regression with its published reference posterior.

inference-gym's ``GermanCreditNumericLogisticRegression``: reference moments from a long
Stan run as published by inference-gym; data UCI Statlog, CC BY 4.0 (Hofmann 1994). It is
the Bayesian logistic regression of the proposal-entropy paper's table.
``data/README.md`` says where the file comes from; the posteriordb posteriors are in
``posteriordb.py``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from pymc_neural_steps.testing.references import Moments, Reference, data_file, scalar_key

__all__ = ["german_credit", "german_credit_data"]


@lru_cache(maxsize=None)
def _german_credit_arrays() -> dict[str, np.ndarray]:
    with data_file("german_credit", "german_credit_numeric_logreg.npz").open("rb") as f, np.load(f) as npz:
        return {key: npz[key] for key in npz.files}


def german_credit_data() -> tuple[np.ndarray, np.ndarray]:
    """The German credit design matrix (1000 x 25: 24 standardised features, then a bias
    column) and the outcomes (1 = bad credit), for building variants of the model."""
    arrays = _german_credit_arrays()
    return arrays["X"].astype(float), arrays["y"].astype(np.int64)


def german_credit() -> Reference:
    """Bayesian logistic regression on the numeric German credit data (inference-gym's target).

    w ~ N(0, 1)^25, y_i ~ Bernoulli(logistic(X_i · w)), X the 24 standardised features plus
    a bias column (last), y = 1 for bad credit. Variable ``w`` of shape (25,).

    Reference mean, sd and MCSE of the mean are inference-gym's published long Stan run.
    No MCSE of the sd is published; we use MCSE(sd) = MCSE(mean) / √2, which holds at equal
    effective sample size for a Gaussian posterior (Var(s) ≈ σ²/(2 ESS)) and this posterior
    (1000 observations, 25 parameters) is very nearly Gaussian. The value (~4e-5) is in any
    case ~1 % of a typical sampler's MCSE and does not affect the z-scores.
    """
    arrays = _german_credit_arrays()
    x = arrays["X"].astype(float)
    y = arrays["y"].astype(np.int64)

    def build_model() -> pm.Model:
        with pm.Model() as model:
            w = pm.Normal("w", mu=0.0, sigma=1.0, shape=x.shape[1])
            pm.Bernoulli("y", logit_p=pt.dot(x, w), observed=y)
        return model

    moments = {
        scalar_key("w", (i,)): Moments(mean, sd, se, se / np.sqrt(2))
        for i, (mean, sd, se) in enumerate(zip(arrays["ref_mean"], arrays["ref_sd"], arrays["ref_mean_se"], strict=True))
    }
    return Reference(
        name="german_credit",
        build_model=build_model,
        moments=moments,
        source="inference-gym GermanCreditNumericLogisticRegression reference (long Stan run); "
        "UCI Statlog German credit, CC BY 4.0 (Hofmann 1994); MCSE(sd) = MCSE(mean)/sqrt(2)",
    )
