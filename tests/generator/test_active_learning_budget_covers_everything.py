"""A wall-clock budget for the proposed model covers its expert, its pipeline stages and its active-learning rounds."""

import pytest

from generator.data.datasets import make_phantom_splits
from generator.training import pipeline, proposed
from generator.training.pipeline import RunConfig
from tests.generator.helpers import tiny_preset

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("one_thread")]


def test_every_part_of_an_expert_al_run_gets_a_share_of_one_budget(monkeypatch, tmp_path):
    splits = make_phantom_splits(48, 32, seed=0)
    seen = {}
    train_expert, train, active_learning = proposed.train_expert, pipeline.train, proposed.run_active_learning

    def record_expert(*args, **kwargs):
        seen["expert"] = kwargs["time_budget"]
        return train_expert(*args, **kwargs)

    def record_pipeline(config, *args, **kwargs):
        seen["pipeline"] = config.time_budget_s
        return train(config, *args, **kwargs)

    def record_rounds(base, splits, out_dir, extra_loss, settings, *args):
        seen["active_learning"] = settings.time_budget_s
        return active_learning(base, splits, out_dir, extra_loss, settings, *args)

    monkeypatch.setattr(proposed, "train_expert", record_expert)
    monkeypatch.setattr(pipeline, "train", record_pipeline)
    monkeypatch.setattr(proposed, "run_active_learning", record_rounds)
    budget = 60.0
    config = RunConfig(
        preset="test-32", variant="expert-al", time_budget_s=budget, al_rounds=1, al_fraction=0.1,
        steps={"parents": 3, "predictors": 3, "hvae": 3, "counterfactual": 3},
    )  # fmt: skip
    summary = proposed.run_proposed(config, tiny_preset(), splits, tmp_path / "run", expert_weights=None)
    assert seen["expert"] == pytest.approx(proposed.EXPERT_BUDGET_SHARE * budget)
    # the stages get what the expert left, less the active-learning share; the rounds get what is left after that
    stage_share = 1 - proposed.ACTIVE_LEARNING_BUDGET_SHARE / (1 - proposed.EXPERT_BUDGET_SHARE)
    assert seen["pipeline"] <= stage_share * budget
    assert 0 < seen["active_learning"] < budget  # what the expert and the stages left of it
    assert summary["expert"]["planned_steps"] >= summary["expert"]["steps"] > 0
    assert "round-1" in summary["checkpoints"]
    # each round's fine-tuning records its plan, so a round the budget cuts short marks the run under-trained
    finetune = summary["active_learning"]["rounds"][0]["finetune"]
    assert finetune["planned_steps"] >= finetune["steps"] > 0
    assert "round-1" not in summary["under_trained"]


def test_an_expert_stopped_by_its_budget_reports_the_steps_it_reached(tmp_path):
    splits = make_phantom_splits(48, 32, seed=0)
    _, report = proposed.train_expert(
        splits["train"], splits["valid"], tmp_path / "expert.pt", steps=100000, time_budget=0.0
    )
    assert report["planned_steps"] == 100000 and report["steps"] == 0
