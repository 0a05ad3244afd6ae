"""The counterbalanced design's linear mixed models (crossed random intercepts for participant and patient, REML),
fitted from the design's cross-products, against statsmodels' MixedLM fit of the same model on planted tables.

Tolerances: statsmodels stops its search when the gradient falls under its tolerance, which leaves about 1e-5
(relative) in the variance components, and it takes standard errors from the observed Hessian including the
fixed-by-variance cross terms, while the fit here uses sigma^2 (X' V^-1 X)^-1 as lme4 does; the two differ by under
3e-4 on these tables. Hence: differences within 1e-5 standard errors, standard errors and standard deviations within
1e-3 (relative). Where statsmodels stops short of the optimum (the reasons model of the complete table), the fit here
must reach at least its REML log-likelihood, as statsmodels itself computes it."""

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.regression.mixed_linear_model import MixedLMParams

from analysis import stats
from analysis.frames import answers_from_records
from analysis.simulate import Profile, simulate_answers

COMPARISONS = {"realness": ("baseline", "real"), "n_reasons": ("real", "baseline")}


def planted(missing):
    answers = simulate_answers(
        Profile(patient_realness_sd=15.0).with_realness_shift("proposed", 8),
        36,
        seed=2,
        block1_design="counterbalanced",
    )
    table = answers_from_records(answers.to_dict("records"))
    if missing:  # one answer in forty lost, at random: an unbalanced design
        lost = np.random.default_rng(4).choice(len(table), size=len(table) // 40, replace=False)
        table = table.drop(index=lost).reset_index(drop=True)
    return table


def statsmodels_fit(answers, value):
    rows = stats.block1_answers(answers).dropna(subset=[value])
    data = pd.DataFrame(
        {
            "y": rows[value].astype(float),
            "source": rows["image_source"].astype(str),
            "participant": rows["participant"].astype(str),
            "case": rows["case"].astype(str),
            "whole": 1,
        }
    )
    model = smf.mixedlm(
        "y ~ C(source, Treatment('proposed'))",
        data,
        groups="whole",
        re_formula="0",
        vc_formula={"participant": "0 + C(participant)", "case": "0 + C(case)"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, model.fit(reml=True)


def reml_loglike(model, fit, random_sd):
    ratios = [random_sd[name] ** 2 / random_sd["residual"] ** 2 for name in model.exog_vc.names]
    params = MixedLMParams.from_components(
        fe_params=np.asarray(fit.fe_params), cov_re=np.zeros((0, 0)), vcomp=np.array(ratios)
    )
    return model.loglike(params, profile_fe=True)


@pytest.mark.parametrize("value, missing", [("realness", False), ("realness", True), ("n_reasons", True)])
def test_estimates_agree_with_statsmodels_where_it_converges(value, missing):
    answers = planted(missing)
    model, reference = statsmodels_fit(answers, value)
    assert reference.converged
    ours = stats.mixed_linear_source_tests(answers, value, COMPARISONS[value])
    for other in COMPARISONS[value]:
        term = f"C(source, Treatment('proposed'))[T.{other}]"
        test = ours[f"proposed_vs_{other}"]
        assert test["converged"]
        assert test["mean_diff"] == pytest.approx(-reference.params[term], abs=1e-5 * reference.bse[term])
        assert test["se"] == pytest.approx(reference.bse[term], rel=1e-3)
        assert test["p"] == pytest.approx(reference.pvalues[term], rel=1e-2, abs=1e-6)
    random_sd = ours[f"proposed_vs_{COMPARISONS[value][0]}"]["random_effects_sd"]
    for name, variance in zip(model.exog_vc.names, np.asarray(reference.vcomp)):
        assert random_sd[name] == pytest.approx(np.sqrt(variance), rel=1e-3)
    assert random_sd["residual"] == pytest.approx(np.sqrt(reference.scale), rel=1e-3)
    assert reml_loglike(model, reference, random_sd) >= reference.llf - 1e-6


def test_reaches_a_higher_reml_likelihood_where_statsmodels_stops_short():
    answers = planted(missing=False)
    model, reference = statsmodels_fit(answers, "n_reasons")
    ours = stats.mixed_linear_source_tests(answers, "n_reasons", COMPARISONS["n_reasons"])["proposed_vs_real"]
    assert ours["converged"]
    assert reml_loglike(model, reference, ours["random_effects_sd"]) > reference.llf + 1.0
    # The design is balanced, so the differences are the same whatever the variance components.
    assert ours["mean_diff"] == pytest.approx(-reference.params["C(source, Treatment('proposed'))[T.real]"], abs=1e-9)


def test_a_design_without_every_source_gives_a_reasoned_nan():
    answers = planted(missing=False)
    answers = answers[~((answers["block"] == 1) & (answers["image_source"] == "real"))]
    result = stats.mixed_linear_source_tests(answers, "realness", ("baseline", "real"))
    assert np.isnan(result["proposed_vs_real"]["mean_diff"])
    assert result["proposed_vs_real"]["note"] == "no real images answered"


def test_a_rank_deficient_design_is_refused():
    with pytest.raises(ValueError, match="full-rank design"):
        stats.crossed_intercepts_reml(
            np.arange(6.0), np.ones((6, 2)), {"participant": list("aabbcc"), "case": list("xyxyxy")}
        )
