"""The anti-causal predictors' learning rate falls to zero over the planned steps, so the judge counterfactual
training learns from does not depend on the noise of its last few steps."""

import math

import pytest
import torch

from generator.causal.predictors import ParentPredictors
from generator.data.graph import MIMIC_GRAPH
from generator.training.pipeline import PredictorsTask, RunConfig, train
from generator.training.presets import get_preset
from tests.generator.test_training_resume import STEPS, synthetic_split

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def test_the_rate_follows_a_cosine_from_the_preset_rate_to_zero():
    preset = get_preset("test-32")
    split = synthetic_split(8, 0)
    task = PredictorsTask(ParentPredictors(MIMIC_GRAPH, 32, 8), preset, split, split, 0, "cpu", steps=100)
    assert task.learning_rate(0) == preset.predictor_lr
    assert math.isclose(task.learning_rate(50), preset.predictor_lr / 2)
    assert task.learning_rate(100) == 0.0 and task.learning_rate(150) == 0.0
    # without a plan (a caller that drives the task itself) the rate stays constant
    assert PredictorsTask(task.predictors, preset, split, split, 0, "cpu").learning_rate(99) == preset.predictor_lr
    record = task.step(75)
    assert record["lr"] == task.learning_rate(75)
    assert all(group["lr"] == task.learning_rate(75) for group in task.optimizer.param_groups)


def test_a_run_plans_the_schedule_over_the_stage_steps(tmp_path):
    torch.manual_seed(0)
    splits = {"train": synthetic_split(24, 0), "valid": synthetic_split(8, 1)}
    preset = get_preset("test-32")
    summary = train(RunConfig(preset="test-32", seed=1, steps={**STEPS, "predictors": 20}), preset, splits, tmp_path)
    history = summary["history"]["predictors"]
    assert [entry["step"] for entry in history] == [10, 20]
    # the rate recorded at step 10 is the one of the tenth step (index 9) of a 20-step plan; the last is near zero
    assert math.isclose(history[0]["lr"], preset.predictor_lr * 0.5 * (1 + math.cos(math.pi * 9 / 20)))
    assert history[-1]["lr"] < 0.01 * preset.predictor_lr
