"""A run whose time budget stops a stage below half its planned steps is marked under-trained, in plain words."""

import io

import pytest
import torch
from django.core.management import call_command

from generator.data import load_splits
from generator.models import TrainingRun
from generator.training import pipeline
from generator.training.budget import describe_steps, describe_under_training, run_stages, under_trained_stages
from tests.generator.helpers import tiny_preset


def test_a_stage_below_half_its_planned_steps_is_under_trained_and_one_at_half_is_not():
    stages = {
        "parents": {"steps": 300, "planned_steps": 300},
        "hvae": {"steps": 21, "planned_steps": 4000},
        "counterfactual": {"steps": 750, "planned_steps": 1500},
    }
    assert under_trained_stages(stages) == {"hvae": {"steps": 21, "planned_steps": 4000}}
    words = describe_under_training(under_trained_stages(stages))
    assert "UNDER-TRAINED" in words and "hvae 21 of 4000 steps" in words
    assert describe_under_training({}) == ""
    assert describe_steps(stages) == "parents 300/300, hvae 21/4000, counterfactual 750/1500"


def test_the_proposed_models_expert_and_active_learning_rounds_count_as_stages():
    pipeline_stages = {"parents": {"steps": 300, "planned_steps": 300}, "hvae": {"steps": 4000, "planned_steps": 4000}}
    summary = {
        "expert": {"source": "trained", "steps": 13, "planned_steps": 13},
        "stages": pipeline_stages,
        "active_learning": {
            "rounds": [
                {"round": 1, "finetune": {"steps": 750, "planned_steps": 750, "valid_free_energy": 4.1}},
                {"round": 2, "finetune": {"steps": 100, "planned_steps": 750}},
            ]
        },
    }
    stages = run_stages(summary)
    assert list(stages) == ["expert", "parents", "hvae", "round-1", "round-2"]
    assert describe_steps(stages) == "expert 13/13, parents 300/300, hvae 4000/4000, round-1 750/750, round-2 100/750"
    assert under_trained_stages(stages) == {"round-2": {"steps": 100, "planned_steps": 750}}
    # a baseline run has its pipeline stages only; an expert loaded from weights has no step plan
    assert run_stages({"stages": pipeline_stages}) == pipeline_stages
    assert list(run_stages({"expert": {"source": "weights"}, "stages": pipeline_stages})) == ["parents", "hvae"]
    assert run_stages({}) == {}


@pytest.mark.ml
@pytest.mark.usefixtures("one_thread")
def test_the_pipeline_marks_a_stage_its_budget_cut_short(phantom_cache, tmp_path):
    splits = load_splits("phantom", str(phantom_cache), 32, {"n": 64, "seed": 0})
    # a budget far too small for the planned steps: every stage stops after its first step or two
    config = pipeline.RunConfig(preset="test-32", steps={"hvae": 5000}, time_budget_s=0.5)
    summary = pipeline.train(config, tiny_preset(), splits, tmp_path / "run")
    assert summary["under_trained"]["hvae"]["planned_steps"] == 5000
    assert summary["under_trained"]["hvae"]["steps"] < 2500
    assert summary["stages"]["hvae"]["planned_steps"] == 5000
    assert summary["machine"]["threads"] == 1 and len(summary["machine"]["load_average"]) == 3
    # the processor and the kernels' instruction set, to trace runs that differ to their machines
    assert summary["machine"]["cpu_model"]
    assert summary["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # without a budget every stage runs its plan
    config = pipeline.RunConfig(preset="test-32", steps=dict.fromkeys(pipeline.STAGES, 2))
    full = pipeline.train(config, tiny_preset(), splits, tmp_path / "full")
    assert full["under_trained"] == {}


@pytest.mark.ml
@pytest.mark.django_db
def test_the_run_record_the_command_and_the_admin_say_the_run_is_under_trained(
    artifacts, phantom_dataset, admin_client
):
    out = io.StringIO()
    call_command(
        "train_generator",
        "--dataset", phantom_dataset.name, "--preset", "test-32", "--steps", "hvae=5000,parents=2,predictors=2,"
        "counterfactual=2", "--budget", "0.5", "--name", "short",
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    run = TrainingRun.objects.get(name="short")
    assert run.status == TrainingRun.Status.SUCCEEDED
    assert run.under_trained["hvae"]["planned_steps"] == 5000
    assert "UNDER-TRAINED" in run.training_warning and "UNDER-TRAINED" in out.getvalue()
    page = admin_client.get(f"/admin/generator/trainingrun/{run.pk}/change/").content.decode()
    assert "UNDER-TRAINED" in page
    listing = admin_client.get("/admin/generator/trainingrun/").content.decode()
    assert "UNDER-TRAINED" in listing
