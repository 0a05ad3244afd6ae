"""The grouped computations give the very figures the per-participant loops gave: values pinned (to 1e-9) from the
loop-based analysis on simulated studies with planted effects, in both Block-1 designs, with and without missing
answers."""

import numpy as np
import pytest

from analysis import stats
from analysis.frames import answers_from_records, select_participants
from analysis.simulate import Profile, simulate_answers

PLANTED = {
    "paired": lambda: simulate_answers(Profile().with_realness_shift("proposed", 10), 30, seed=11),
    "counterbalanced": lambda: simulate_answers(
        Profile(patient_realness_sd=15.0).with_realness_shift("proposed", 8),
        36,
        seed=2,
        block1_design="counterbalanced",
    ),
}


def exact(value):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def analysed(design, missing=False):
    table = answers_from_records(PLANTED[design]().to_dict("records"))
    if missing:  # one answer in forty lost, at random
        lost = np.random.default_rng(4).choice(len(table), size=len(table) // 40, replace=False)
        table = table.drop(index=lost).reset_index(drop=True)
    kept, exclusions = select_participants(table)
    results, tables = stats.analyse(kept, fit_models=False)
    return kept, exclusions, results, tables


@pytest.mark.parametrize(
    "design, ttest, auroc, first_rows",
    [
        (
            "paired",
            (5.380567067061265, 8.811181131457897e-06, 8.452777777777778, 0.9823526515996223),
            {
                "baseline": (0.4953703703703704, 0.8347711331714626),
                "proposed": (0.37361111111111106, 0.00018361597501189675),
            },
            [
                ("sim001", 0.4027777777777778, 0.1875),
                ("sim002", 0.5347222222222222, 0.40625),
                ("sim003", 0.5, 0.6736111111111112),
            ],
        ),
        (
            "counterbalanced",
            (1.8882498341418104, 0.06730396953653396, 5.277777777777778, 0.3147083056903017),
            {
                "baseline": (0.5407986111111112, 0.27545443383977275),
                "proposed": (0.4826388888888889, 0.6091364628216674),
            },
            [("sim001", 0.1875, 0.0), ("sim002", 0.75, 0.6875), ("sim003", 0.3125, 0.3125)],
        ),
    ],
)
def test_block1_figures_keep_their_values(design, ttest, auroc, first_rows):
    _, _, results, tables = analysed(design)
    test = results["block1"]["realness_ttest"]["proposed_vs_baseline"]
    assert (test["t"], test["p"], test["mean_diff"], test["dz"]) == exact(ttest)
    for model, (mean, p) in auroc.items():
        assert (
            results["block1"]["realness_auroc"][model]["mean"],
            results["block1"]["realness_auroc"][model]["p"],
        ) == (
            exact(mean),
            exact(p),
        )
    per_participant = tables["realness_auroc_per_participant"]
    assert list(per_participant.columns) == ["baseline", "proposed"]
    assert per_participant.index.name == "participant"
    rows = [
        (participant, *values) for participant, values in zip(per_participant.index[:3], per_participant.to_numpy())
    ]
    assert rows == [(participant, exact(a), exact(b)) for participant, a, b in first_rows]


@pytest.mark.parametrize(
    "design, correction, rmcorr, brier, mcnemar_p",
    [
        ("paired", (27, 88, 0.3068181818181818), 0.19619911645583815, 0.24392592592592593, 0.0004985148935752056),
        (
            "counterbalanced",
            (32, 103, 0.3106796116504854),
            0.031877672112668835,
            0.2556584362139918,
            6.576869920648128e-07,
        ),
    ],
)
def test_block2_figures_keep_their_values(design, correction, rmcorr, brier, mcnemar_p):
    _, _, results, _ = analysed(design)
    block2 = results["block2"]
    rate = block2["correction_rate"]["proposed"]
    assert (rate["k"], rate["n"], rate["estimate"]) == (correction[0], correction[1], exact(correction[2]))
    assert block2["confidence_accuracy_rmcorr"]["final"]["proposed"]["r"] == exact(rmcorr)
    assert block2["brier"]["final"]["proposed"]["brier"] == exact(brier)
    assert block2["switch_table"]["proposed"]["mcnemar"]["p"] == exact(mcnemar_p)


@pytest.mark.parametrize(
    "design, n_left_out, n_kept, first",
    [
        ("paired", 23, 420, ("sim002", "incomplete: 36 of 36 Block-1 and 23 of 24 Block-2 answers")),
        ("counterbalanced", 23, 468, ("sim003", "incomplete: 11 of 12 Block-1 and 23 of 24 Block-2 answers")),
    ],
)
def test_participants_with_missing_answers_are_left_out_as_before(design, n_left_out, n_kept, first):
    kept, exclusions, _, _ = analysed(design, missing=True)
    assert len(exclusions) == n_left_out and len(kept) == n_kept
    assert (exclusions[0]["participant"], exclusions[0]["reason"], exclusions[0]["status"]) == (*first, "unknown")
    assert [entry["participant"] for entry in exclusions] == sorted(entry["participant"] for entry in exclusions)
    assert not set(kept["participant"]) & {entry["participant"] for entry in exclusions}
