import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from analysis import stats
from tests.analysis.tables import block1_row, tidy

# Two participants, two patients. Patient A is effusion; both of its counterfactuals show healthy.
# Patient B is pneumonia; both counterfactuals show effusion.
HAND_ROWS = [
    # participant 1
    block1_row("p1", "A", "real", "effusion", "effusion", realness=80, reasons=()),
    block1_row("p1", "A", "baseline", "healthy", "effusion", realness=30, reasons=(1, 2, 3)),
    block1_row("p1", "A", "proposed", "healthy", "healthy", realness=60, reasons=(2,)),
    block1_row("p1", "B", "real", "pneumonia", "healthy", realness=70, reasons=(4,)),
    block1_row("p1", "B", "baseline", "effusion", "effusion", realness=40, reasons=(1, 5)),
    block1_row("p1", "B", "proposed", "effusion", "effusion", realness=50, reasons=()),
    # participant 2
    block1_row("p2", "A", "real", "effusion", "effusion", realness=90, reasons=(7,)),
    block1_row("p2", "A", "baseline", "healthy", "healthy", realness=20, reasons=(1, 2)),
    block1_row("p2", "A", "proposed", "healthy", "healthy", realness=45, reasons=(1,)),
    block1_row("p2", "B", "real", "pneumonia", "pneumonia", realness=60, reasons=()),
    block1_row("p2", "B", "baseline", "effusion", "pneumonia", realness=35, reasons=(3, 4, 6)),
    block1_row("p2", "B", "proposed", "effusion", "pneumonia", realness=65, reasons=(6,)),
    # participant 3 answers only some images
    block1_row("p3", "A", "real", "effusion", "pneumonia", realness=55, reasons=(1,)),
    block1_row("p3", "A", "baseline", "healthy", "healthy", realness=25, reasons=(1, 2, 3, 4)),
    block1_row("p3", "A", "proposed", "healthy", "healthy", realness=75, reasons=()),
    block1_row("p3", "B", "proposed", "effusion", None),
]


@pytest.fixture
def answers():
    return tidy(HAND_ROWS)


def test_wilson_interval_matches_statsmodels():
    for k, n in [(0, 10), (3, 10), (10, 10), (37, 100), (1, 1)]:
        expected = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert stats.wilson_interval(k, n) == pytest.approx(list(expected), abs=1e-9)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_accuracy_by_source_pools_answers_and_skips_unanswered(answers):
    result = stats.accuracy_by_source(answers)
    # real: p1 A right, p1 B wrong, p2 A right, p2 B right, p3 A wrong -> 3/5
    assert (result["real"]["k"], result["real"]["n"]) == (3, 5)
    # baseline: wrong, right, right, wrong, right -> 3/5
    assert (result["baseline"]["k"], result["baseline"]["n"]) == (3, 5)
    # proposed: right, right, right, wrong, right; p3 B unanswered does not count -> 4/5
    assert (result["proposed"]["k"], result["proposed"]["n"]) == (4, 5)
    assert result["proposed"]["estimate"] == pytest.approx(0.8)
    assert result["proposed"]["ci95"] == pytest.approx(list(proportion_confint(4, 5, method="wilson")))


def test_accuracy_by_source_and_condition_uses_the_condition_shown(answers):
    result = stats.accuracy_by_source_condition(answers)
    assert result["baseline"]["healthy"]["k"] == 2 and result["baseline"]["healthy"]["n"] == 3
    assert result["baseline"]["effusion"]["k"] == 1 and result["baseline"]["effusion"]["n"] == 2
    assert result["real"]["pneumonia"]["k"] == 1 and result["real"]["pneumonia"]["n"] == 2
    assert result["real"]["healthy"]["n"] == 0 and math.isnan(result["real"]["healthy"]["estimate"])
    assert result["real"]["healthy"]["note"] == "no answers"


def test_within_patient_difference_pairs_the_two_counterfactuals_of_a_patient(answers):
    result = stats.within_patient_difference(answers)
    # healthy (patient A): p1 1-0, p2 1-1, p3 1-1 -> differences 1, 0, 0
    assert result["healthy"]["mean_diff"] == pytest.approx(1 / 3)
    assert result["healthy"]["n_pairs"] == 3
    half = sps.t.ppf(0.975, 2) * np.std([1, 0, 0], ddof=1) / math.sqrt(3)
    assert result["healthy"]["ci95"] == pytest.approx([1 / 3 - half, 1 / 3 + half])
    # effusion (patient B): p1 1-1, p2 0-0; p3 has no answered pair
    assert result["effusion"]["mean_diff"] == 0 and result["effusion"]["n_pairs"] == 2
    assert result["pneumonia"]["n_pairs"] == 0 and "note" in result["pneumonia"]


def test_realness_per_participant_means_and_paired_ttests(answers):
    table = stats.per_participant_by_source(answers, "realness")
    assert table.loc["p1", "proposed"] == pytest.approx(55)
    assert table.loc["p2", "baseline"] == pytest.approx(27.5)
    assert table.loc["p3", "proposed"] == pytest.approx(75)
    proposed = np.array([55, 55, 75])
    baseline = np.array([35, 27.5, 25])
    result = stats.paired_source_tests(table, ("baseline", "real"))["proposed_vs_baseline"]
    reference = sps.ttest_rel(proposed, baseline)
    diff = proposed - baseline
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)
    assert result["df"] == 2
    assert result["mean_diff"] == pytest.approx(diff.mean())
    assert result["dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    interval = sps.t.interval(0.95, 2, loc=diff.mean(), scale=diff.std(ddof=1) / math.sqrt(3))
    assert result["ci95"] == pytest.approx(list(interval))


def test_reasons_are_totals_per_participant_and_source(answers):
    totals = stats.per_participant_by_source(answers, "n_reasons", "sum")
    assert totals.loc["p1"].to_dict() == {"real": 1, "baseline": 5, "proposed": 1}
    assert totals.loc["p2"].to_dict() == {"real": 1, "baseline": 5, "proposed": 2}
    assert totals.loc["p3", "proposed"] == 0  # the unanswered image adds nothing
    result = stats.paired_source_tests(totals, ("real", "baseline"))["proposed_vs_real"]
    reference = sps.ttest_rel([1, 2, 0], [1, 1, 1])
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)


def test_paired_ttest_with_zero_variance_gives_nan_and_a_reason():
    result = stats.paired_ttest(pd.Series([5.0, 6.0, 7.0]), pd.Series([3.0, 4.0, 5.0]))
    assert math.isnan(result["t"]) and math.isnan(result["p"]) and math.isnan(result["dz"])
    assert result["mean_diff"] == 2 and "zero variance" in result["note"]
    single = stats.paired_ttest(pd.Series([1.0]), pd.Series([2.0]))
    assert math.isnan(single["t"]) and "at least 2" in single["note"]


def test_realness_auroc_per_participant_matches_sklearn(answers):
    summary, table = stats.realness_auroc(answers)
    p1 = answers[(answers["participant"] == "p1")]
    real = p1.loc[p1["image_source"] == "real", "realness"]
    proposed = p1.loc[p1["image_source"] == "proposed", "realness"]
    labels = [1] * len(real) + [0] * len(proposed)
    assert table.loc["p1", "proposed"] == pytest.approx(roc_auc_score(labels, list(real) + list(proposed)))
    # ties count half: one real image rated 55 against one proposed image rated 75 -> 0
    assert table.loc["p3", "proposed"] == 0
    assert table.loc["p2", "proposed"] == pytest.approx(0.75)
    values = table["proposed"]
    assert summary["proposed"]["mean"] == pytest.approx(values.mean())
    assert summary["proposed"]["p"] == pytest.approx(sps.ttest_1samp(values, 0.5).pvalue)
    # every real image beats every baseline image for everyone: AUROC 1 with no spread, so no test
    assert table["baseline"].tolist() == [1.0, 1.0, 1.0]
    assert summary["baseline"]["mean"] == 1.0 and math.isnan(summary["baseline"]["p"]) and summary["baseline"]["note"]


def test_imrmc_rows_pair_real_images_with_each_models_images(answers):
    rows = stats.imrmc_realness(answers)
    assert list(rows.columns) == ["reader", "case", "modality", "score", "truth"]
    baseline = rows[rows["modality"] == "baseline"]
    # 5 answered real images and 5 baseline images
    assert len(baseline) == 10 and baseline["truth"].sum() == 5
    row = baseline[(baseline["reader"] == "p1") & (baseline["case"] == "A-synthetic")]
    assert row["score"].item() == 30 and row["truth"].item() == 0
