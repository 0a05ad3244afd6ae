"""A training job's percentage follows the run's stages in order, whatever the variant."""

import pytest

from generator.models import TrainingRun
from generator.tasks import stage_progress


class RecordingContext:
    def __init__(self):
        self.reports = []

    def progress(self, percent, message=None):
        self.reports.append((round(percent, 2), message))


@pytest.mark.parametrize(
    ("variant", "stage", "fraction", "percent"),
    [
        ("baseline", "data", 0.0, 0.0),
        ("baseline", "hvae", 0.5, 100 * 3.5 / 5),  # data, parents, predictors | hvae half done | counterfactual
        ("expert", "parents", 1.0, 100 * 3 / 6),  # data, expert, parents done
        ("expert-al", "active-learning", 0.5, 100 * 6.5 / 7),
    ],
)
def test_stage_and_fraction_map_to_one_percentage(variant, stage, fraction, percent):
    ctx = RecordingContext()
    stage_progress(ctx, TrainingRun(variant=variant, config={"run": {}}))(stage, fraction, "step 1/2")
    assert ctx.reports == [(round(percent, 2), f"{stage}: step 1/2")]


def test_reports_within_a_stage_are_throttled_but_stage_changes_and_completion_always_pass():
    ctx = RecordingContext()
    report = stage_progress(ctx, TrainingRun(variant="baseline", config={"run": {}}))
    for step in range(1, 50):
        report("parents", step / 50, f"step {step}")
    report("parents", 1.0, "complete")
    report("predictors", 0.02, "step 1")
    assert [message for _, message in ctx.reports] == ["parents: step 1", "parents: complete", "predictors: step 1"]
    assert ctx.reports[-1][0] == pytest.approx(100 * 2.02 / 5, abs=0.01)
