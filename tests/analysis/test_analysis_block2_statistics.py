import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from analysis import stats
from tests.analysis.tables import block2_rows, tidy

WRONG = {"effusion": "healthy", "pneumonia": "effusion"}
TRUTH = {"c1": "effusion", "c2": "effusion", "c3": "pneumonia", "c4": "pneumonia"}
# (participant, case, model, first right?, final right? (None: no final answer), first confidence, final confidence)
CASES = [
    ("a", "c1", "baseline", 0, 1, 2, 5),
    ("a", "c2", "proposed", 0, 0, 3, 3),
    ("a", "c3", "baseline", 1, 1, 4, 6),
    ("a", "c4", "proposed", 0, 1, 2, 4),
    ("b", "c1", "proposed", 0, 1, 3, 5),
    ("b", "c2", "baseline", 1, 0, 5, 2),
    ("b", "c3", "proposed", 1, 1, 6, 6),
    ("b", "c4", "baseline", 0, 0, 1, 2),
    ("c", "c1", "baseline", 0, 1, 4, 4),
    ("c", "c2", "proposed", 1, 1, 2, 3),
    ("c", "c3", "baseline", 0, 0, 3, 1),
    ("c", "c4", "proposed", 0, None, 5, None),
    ("d", "c1", "proposed", 1, 1, 6, 5),
    ("d", "c2", "baseline", 0, 1, 1, 4),
    ("d", "c3", "proposed", 0, 0, 2, 2),
    ("d", "c4", "baseline", 1, 1, 3, 5),
]


def _answer(case, right):
    if right is None:
        return None
    return TRUTH[case] if right else WRONG[TRUTH[case]]


@pytest.fixture
def pairs():
    rows = []
    for participant, case, model, first, final, first_conf, final_conf in CASES:
        rows += block2_rows(
            participant, case, model, TRUTH[case], _answer(case, first), _answer(case, final), first_conf, final_conf
        )
    return stats.block2_pairs(tidy(rows))


def test_first_decision_accuracy_pools_all_first_answers(pairs):
    result = stats.first_accuracy(pairs)
    assert (result["k"], result["n"]) == (6, 16)
    assert result["by_model"]["baseline"]["k"] == 3 and result["by_model"]["baseline"]["n"] == 8


def test_correction_rate_is_the_share_of_wrong_first_decisions_made_right(pairs):
    result = stats.correction_rate(pairs)
    # baseline wrong first: a-c1 R, b-c4 W, c-c1 R, c-c3 W, d-c2 R
    assert (result["baseline"]["k"], result["baseline"]["n"]) == (3, 5)
    # proposed wrong first with a final answer: a-c2 W, a-c4 R, b-c1 R, d-c3 W (c-c4 has no final answer)
    assert (result["proposed"]["k"], result["proposed"]["n"]) == (2, 4)


def test_correction_rate_without_each_models_best_case(pairs):
    result = stats.correction_rate_excluding_top_case(pairs)
    # baseline: c1 2/2 and c2 1/1 tie at rate 1; c1 has more wrong first decisions and goes
    assert result["baseline"]["excluded_case"] == "c1"
    assert (result["baseline"]["k"], result["baseline"]["n"]) == (1, 3)
    # proposed: c1 1/1 and c4 1/1 tie completely; the smaller case id goes
    assert result["proposed"]["excluded_case"] == "c1"
    assert (result["proposed"]["k"], result["proposed"]["n"]) == (1, 3)


def test_accuracy_change_per_participant_and_model(pairs):
    table = stats.accuracy_change_per_participant(pairs)
    assert table["baseline"].to_dict() == {"a": 0.5, "b": -0.5, "c": 0.5, "d": 0.5}
    assert table["proposed"].to_dict() == {"a": 0.5, "b": 0.5, "c": 0.0, "d": 0.0}
    summary = stats.accuracy_change_summary(table)
    assert summary["baseline"]["mean"] == pytest.approx(0.25)
    assert summary["baseline"]["p"] == pytest.approx(sps.ttest_1samp([0.5, -0.5, 0.5, 0.5], 0).pvalue)
    by_case = stats.accuracy_change_per_case(pairs)
    assert by_case.loc["c1", "baseline"] == 1.0 and by_case.loc["c2", "baseline"] == 0.0


def _per_participant_means(model, decision, condition=None):
    confidence, accuracy = defaultdict(list), defaultdict(list)
    for participant, case, m, first, final, first_conf, final_conf in CASES:
        right, conf = (first, first_conf) if decision == "first" else (final, final_conf)
        if m != model or right is None or (condition and TRUTH[case] != condition):
            continue
        confidence[participant].append(conf)
        accuracy[participant].append(right)
    names = sorted(confidence)
    return [np.mean(confidence[p]) for p in names], [np.mean(accuracy[p]) for p in names]


@pytest.mark.parametrize("decision", ["first", "final"])
@pytest.mark.parametrize("model", ["baseline", "proposed"])
def test_confidence_accuracy_correlation_across_participants(pairs, decision, model):
    confidence, accuracy = _per_participant_means(model, decision)
    result = stats.confidence_accuracy(pairs)[decision][model]
    reference = sps.pearsonr(confidence, accuracy)
    assert result["r"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)
    assert result["df"] == len(confidence) - 2


def test_confidence_accuracy_by_condition(pairs):
    result = stats.confidence_accuracy_by_condition(pairs)
    confidence, accuracy = _per_participant_means("baseline", "final", "effusion")
    assert (confidence, accuracy) == ([5, 2, 4, 4], [1, 0, 1, 1])
    reference = sps.pearsonr(confidence, accuracy)
    assert result["final"]["baseline"]["effusion"]["r"] == pytest.approx(reference.statistic)
    assert result["final"]["baseline"]["effusion"]["p"] == pytest.approx(reference.pvalue)
    # proposed, first decision, effusion: one case each for a, b, c, d -> accuracies 0, 0, 1, 1
    confidence, accuracy = _per_participant_means("proposed", "first", "effusion")
    assert result["first"]["proposed"]["effusion"]["r"] == pytest.approx(sps.pearsonr(confidence, accuracy).statistic)


def test_switch_table_and_exact_mcnemar(pairs):
    table = stats.switch_tables(pairs)["baseline"]
    assert (table["right_to_right"], table["right_to_wrong"], table["wrong_to_right"], table["wrong_to_wrong"]) == (
        2,
        1,
        3,
        2,
    )
    # exact McNemar: two-sided binomial test of 1 right->wrong among 4 discordant pairs
    assert table["mcnemar"]["p"] == pytest.approx(sps.binomtest(1, 4, 0.5).pvalue)


def test_brier_score_of_confidence_as_probability(pairs):
    result = stats.brier_scores(pairs)["first"]["proposed"]
    squared = []
    for _, _, model, first, _, first_conf, _ in CASES:
        if model == "proposed":
            probability = 1 / 3 + (first_conf - 1) / 5 * (2 / 3)
            squared.append((probability - first) ** 2)
    assert result["brier"] == pytest.approx(np.mean(squared))
    assert stats.confidence_as_probability([1, 6]).tolist() == pytest.approx([1 / 3, 1.0])


def test_repeated_measures_correlation_equals_the_ancova_partial_correlation():
    rng = np.random.default_rng(4)
    subjects = np.repeat(np.arange(8), 5)
    x = rng.normal(size=40) + subjects
    y = 0.4 * x + rng.normal(size=40) - 0.8 * subjects
    frame = pd.DataFrame({"participant": subjects.astype(str), "x": x, "y": y})
    result = stats.repeated_measures_correlation(frame, "x", "y")
    fit = smf.ols("y ~ C(participant) + x", frame).fit()
    t = fit.tvalues["x"]
    assert result["df"] == fit.df_resid == 40 - 8 - 1
    assert result["r"] == pytest.approx(t / math.sqrt(t * t + fit.df_resid))
    assert result["p"] == pytest.approx(fit.pvalues["x"])
    # the pooled correlation is strongly negative here, the within-participant one positive
    assert np.corrcoef(x, y)[0, 1] < 0 < result["r"]


def test_holm_matches_statsmodels_and_skips_nan():
    pvalues = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2, "e": math.nan}
    adjusted = stats.holm(pvalues)
    reference = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    assert [adjusted[k] for k in "abcd"] == pytest.approx(list(reference))
    assert math.isnan(adjusted["e"])


def test_no_wrong_first_decisions_gives_nan_with_a_reason():
    rows = []
    for participant in ("a", "b", "c"):
        for case, model in (("c1", "baseline"), ("c3", "proposed")):
            rows += block2_rows(participant, case, model, TRUTH[case], TRUTH[case], TRUTH[case], 4, 4)
    pairs = stats.block2_pairs(tidy(rows))
    rate = stats.correction_rate(pairs)["baseline"]
    assert math.isnan(rate["estimate"]) and rate["note"] == "no wrong first decisions"
    excluded = stats.correction_rate_excluding_top_case(pairs)["proposed"]
    assert excluded["excluded_case"] is None and math.isnan(excluded["estimate"])
    correlation = stats.confidence_accuracy(pairs)["first"]["baseline"]
    assert math.isnan(correlation["r"]) and "constant" in correlation["note"]
    assert math.isnan(stats.switch_tables(pairs)["baseline"]["mcnemar"]["p"])
    assert math.isnan(stats.confidence_accuracy_within(pairs)["first"]["baseline"]["r"])
