"""Reference posteriors and an exactness check for MCMC step methods, in the spirit of ``pymc.testing``.

>>> import pymc as pm
>>> from pymc_neural_steps.testing import check_exactness, eight_schools_noncentered
>>> reference = eight_schools_noncentered()
>>> with reference.build_model():
...     idata = pm.sample(chains=2, random_seed=1)          # or step=NNgHMC(), ...
>>> check_exactness(idata, reference).assert_passed()

A :class:`Reference` holds a model builder and the posterior mean and sd of every scalar
parameter, keyed ``"mu"``, ``"theta[0]"``, ``"rate[1, 0]"`` (0-based, constrained space), with
their Monte Carlo standard errors. :func:`check_exactness` turns a sample into z-scores
against it. ``REFERENCES`` maps each target's name to its factory.
"""

from pymc_neural_steps.testing.analytic import (
    banana,
    calendar_year_regression,
    constrained,
    correlated_gaussian,
    funnel,
    ill_conditioned_gaussian,
    rotated_gaussian,
    strongly_correlated_gaussian,
)
from pymc_neural_steps.testing.exactness import ExactnessReport, ZScore, check_exactness
from pymc_neural_steps.testing.expensive import garch21, gp_regression, logistic_regression_50k
from pymc_neural_steps.testing.hierarchical import centered_varying_intercepts
from pymc_neural_steps.testing.posteriordb import (
    ark,
    earn_height,
    eight_schools_centered,
    eight_schools_noncentered,
    garch11,
    gp_regr,
    hmm_drive_0,
    hmm_example,
    kidscore_interaction,
    kidscore_interaction_c,
    mesquite,
    nes1996,
    sblrc_blr,
)
from pymc_neural_steps.testing.published import german_credit, german_credit_data
from pymc_neural_steps.testing.references import Moments, Reference, from_one_based, scalar_key, split_key

REFERENCES = {
    factory.__name__: factory
    for factory in (
        correlated_gaussian,
        constrained,
        eight_schools_noncentered,
        garch11,
        german_credit,
        ark,
        strongly_correlated_gaussian,
        ill_conditioned_gaussian,
        rotated_gaussian,
        funnel,
        banana,
        calendar_year_regression,
        gp_regression,
        logistic_regression_50k,
        garch21,
        eight_schools_centered,
        centered_varying_intercepts,
        earn_height,
        kidscore_interaction,
        kidscore_interaction_c,
        mesquite,
        nes1996,
        sblrc_blr,
        gp_regr,
        hmm_example,
        hmm_drive_0,
    )
}
"""Every reference factory by name; call one to get its :class:`Reference`."""

ROBUSTNESS_SUITE = (
    "ark", "eight_schools_noncentered", "eight_schools_centered", "garch11", "earn_height",
    "kidscore_interaction", "kidscore_interaction_c", "mesquite", "sblrc_blr", "gp_regr",
    "hmm_example", "hmm_drive_0", "nes1996", "german_credit",
)
"""The real posteriors every method must pass with its defaults (issue 14): the thirteen
posteriordb ones and the German credit regression."""

__all__ = [
    "REFERENCES",
    "ROBUSTNESS_SUITE",
    "ExactnessReport",
    "Moments",
    "Reference",
    "ZScore",
    "ark",
    "banana",
    "calendar_year_regression",
    "centered_varying_intercepts",
    "check_exactness",
    "earn_height",
    "eight_schools_centered",
    "constrained",
    "correlated_gaussian",
    "eight_schools_noncentered",
    "from_one_based",
    "funnel",
    "garch11",
    "garch21",
    "gp_regression",
    "german_credit",
    "german_credit_data",
    "gp_regr",
    "hmm_drive_0",
    "hmm_example",
    "ill_conditioned_gaussian",
    "kidscore_interaction",
    "kidscore_interaction_c",
    "logistic_regression_50k",
    "mesquite",
    "nes1996",
    "rotated_gaussian",
    "sblrc_blr",
    "scalar_key",
    "split_key",
    "strongly_correlated_gaussian",
]
