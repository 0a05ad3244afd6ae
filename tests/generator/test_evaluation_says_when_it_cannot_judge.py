"""Evaluation reports the judges' own accuracy first and says in plain words when its figures cannot judge."""

import torch

from generator.data.graph import MIMIC_GRAPH
from generator.evaluation.evaluate import EvaluationImages, judgement
from generator.evaluation.report import markdown, table_rows


def images(n=6):
    pa = {
        "age": torch.full((n,), 50.0),
        "sex": torch.zeros(n),
        "race": torch.zeros(n, dtype=torch.long),
        "wcc": torch.full((n,), 8.0),
        "disease": torch.tensor([0, 1, 2] * (n // 3)),
    }
    return EvaluationImages(MIMIC_GRAPH, torch.zeros(n, 1, 8, 8), pa)


def observed(mean, low, high):
    return {"evaluation_predictors": {"disease": {"auroc": {"mean": mean, "ci95": [low, high]}}}}


def test_a_judge_no_better_than_chance_and_unchanged_counterfactuals_are_flagged():
    batch = images()
    unchanged = [batch.x.clone() for _ in range(3)]
    result = judgement({"predictors_on_observations": observed(0.44, 0.25, 0.67)}, batch, unchanged)
    assert result["judge_meaningful"] is False and result["identical_to_inputs"] is True
    assert result["mean_abs_change"] == 0.0
    assert any("NOT MEANINGFUL" in w and "0.44" in w for w in result["warnings"])
    assert any("IDENTICAL TO THEIR INPUTS" in w for w in result["warnings"])


def test_a_clear_judge_and_visible_changes_raise_no_warning():
    batch = images()
    changed = [batch.x + 0.1 for _ in range(3)]
    result = judgement({"predictors_on_observations": observed(0.9, 0.82, 0.96)}, batch, changed)
    assert result["judge_meaningful"] is True and result["identical_to_inputs"] is False
    assert result["warnings"] == []
    assert abs(result["mean_abs_change"] - 0.1) < 1e-6


def test_the_report_prints_the_judges_accuracy_and_the_warnings_before_the_table():
    batch = images()
    weak = judgement({"predictors_on_observations": observed(0.5, 0.3, 0.7)}, batch, [batch.x] * 3)
    results = {"Baseline": {"seed": 0, "n": 6, "judgement": weak}}
    text = markdown(*table_rows(results))
    assert text.index("disease AUROC") < text.index("| Model |")
    assert text.index("NOT MEANINGFUL") < text.index("| Model |")
    assert "IDENTICAL TO THEIR INPUTS" in text
