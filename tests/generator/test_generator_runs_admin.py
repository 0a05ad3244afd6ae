"""The training-run admin: start a run as a background job, and read its state and metrics."""

import pytest
from django.urls import reverse

import generator.admin_runs  # noqa: F401  (registers the TrainingRun admin)
from generator.models import Dataset, TrainingRun
from generator.services import runs
from jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(settings, tmp_path):
    settings.ARTIFACTS_ROOT = tmp_path / "artifacts"
    return Dataset.objects.create(name="phantom-admin", kind="phantom", root=str(tmp_path), resolution=32)


def start_form(dataset, **overrides):
    data = {"dataset": dataset.pk, "variant": "expert-al", "preset": "test-32", "seed": "7", "name": "from-admin",
            "steps": "hvae=4", "budget": "", "al_rounds": "2", "al_fraction": "0.2"}  # fmt: skip
    return {**data, **overrides}


def test_start_form_creates_the_run_and_queues_its_job(admin_client, dataset):
    response = admin_client.post(reverse("admin:generator_trainingrun_start"), start_form(dataset))
    run = TrainingRun.objects.get(name="from-admin")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:generator_trainingrun_change", args=[run.pk])
    assert (run.variant, run.preset, run.seed, run.status) == ("expert-al", "test-32", 7, "created")
    assert run.config["run"]["steps"] == {"hvae": 4}
    assert run.config["run"]["al_rounds"] == 2 and run.config["run"]["al_fraction"] == 0.2
    job = Job.objects.get(kind="train_generator")
    assert run.job == job and job.params == {"run": run.name, "resume": False}


def test_invalid_start_form_shows_the_error_and_creates_nothing(admin_client, dataset):
    response = admin_client.post(reverse("admin:generator_trainingrun_start"), start_form(dataset, steps="hvea=4"))
    assert response.status_code == 200
    assert "expected N or stage=N" in response.content.decode()
    assert not TrainingRun.objects.exists() and not Job.objects.exists()


def test_add_button_leads_to_the_start_form_with_the_data_set_chosen(admin_client, dataset):
    response = admin_client.get(reverse("admin:generator_trainingrun_add") + f"?dataset={dataset.pk}")
    assert response["Location"] == reverse("admin:generator_trainingrun_start") + f"?dataset={dataset.pk}"
    page = admin_client.get(response["Location"]).content.decode()
    assert f'<option value="{dataset.pk}" selected>' in page


def test_run_pages_show_status_job_and_readable_metrics(admin_client, dataset):
    run = runs.create_training_run(dataset, "baseline", "test-32", name="shown")
    summary = {"mean": 0.8, "ci95": [0.7, 0.9], "n": 6}
    TrainingRun.objects.filter(pk=run.pk).update(
        status="succeeded",
        stage="done",
        checkpoints={"counterfactual": "/runs/shown/counterfactual.pt", "final": "/runs/shown/counterfactual.pt"},
        metrics={"counterfactual": {"n": 6, "seed": 0, "effectiveness": {"evaluation_predictors": {"disease": {
            "auroc": summary}}}}},
        history={"hvae": [{"step": 10, "free_energy": 3.25}]},
    )  # fmt: skip
    listing = admin_client.get(reverse("admin:generator_trainingrun_changelist")).content.decode()
    assert "shown" in listing and "succeeded" in listing and "baseline" in listing
    page = admin_client.get(reverse("admin:generator_trainingrun_change", args=[run.pk])).content.decode()
    assert "Baseline (shown)" in page and "0.800 [0.700, 0.900]" in page
    assert "/runs/shown/counterfactual.pt" in page and "free_energy 3.25" in page


def test_run_page_shows_in_plain_words_when_the_evaluation_cannot_judge(admin_client, dataset):
    run = runs.create_training_run(dataset, "baseline", "test-32", name="unjudged")
    judgement = {"warnings": ["NOT MEANINGFUL: judges at chance", "COUNTERFACTUALS IDENTICAL TO THEIR INPUTS: x"]}
    TrainingRun.objects.filter(pk=run.pk).update(
        status="succeeded",
        stage="done",
        checkpoints={"counterfactual": "/runs/u/counterfactual.pt", "final": "/runs/u/counterfactual.pt"},
        metrics={"counterfactual": {"n": 6, "seed": 0, "judgement": judgement}},
    )
    page = admin_client.get(reverse("admin:generator_trainingrun_change", args=[run.pk])).content.decode()
    assert "NOT MEANINGFUL: judges at chance" in page and "COUNTERFACTUALS IDENTICAL TO THEIR INPUTS" in page
