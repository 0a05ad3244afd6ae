"""From the study admin a researcher picks two finished training runs and queues the stimulus-generation job."""

import pytest

from generator.models import Dataset, TrainingRun
from studyplatform.models import AuditLog, Job
from tests.factories import StudyFactory

pytestmark = pytest.mark.django_db


def finished_run(dataset, name, variant):
    return TrainingRun.objects.create(name=name, dataset=dataset, variant=variant, status=TrainingRun.Status.SUCCEEDED)


@pytest.fixture
def runs():
    dataset = Dataset.objects.create(name="nih-sample", kind="nih", root="/data/nih", resolution=64)
    unfinished = TrainingRun.objects.create(name="still-training", dataset=dataset, status=TrainingRun.Status.RUNNING)
    return finished_run(dataset, "base", "baseline"), finished_run(dataset, "ours", "expert-al"), unfinished


def post_action(client, study, **data):
    return client.post(
        "/admin/studyplatform/study/",
        {"action": "generate_stimuli", "_selected_action": [str(study.pk)], **data},
    )


def test_the_form_offers_only_finished_runs(admin_client, runs, media_root):
    study = StudyFactory()
    response = post_action(admin_client, study)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Generate counterfactual stimuli" in page
    assert ">base<" in page or "base (baseline" in page
    assert "still-training" not in page
    assert not Job.objects.exists()


def test_choosing_runs_queues_one_job_with_their_ids_and_audits_it(admin_client, runs, media_root):
    baseline, proposed, _ = runs
    study = StudyFactory()

    response = post_action(
        admin_client, study, baseline_run=str(baseline.pk), proposed_run=str(proposed.pk), samples=4, seed=3
    )

    assert response.status_code == 302
    job = Job.objects.get()
    assert job.kind == "generate_stimuli"
    assert job.params == {
        "study_id": study.pk,
        "baseline_run": str(baseline.pk),
        "proposed_run": str(proposed.pk),
        "samples": 4,
        "seed": 3,
    }
    assert AuditLog.objects.filter(action="stimuli.generate").count() == 1


def test_an_unfinished_run_is_refused_and_nothing_is_queued(admin_client, runs, media_root):
    baseline, _, unfinished = runs
    study = StudyFactory()
    response = post_action(admin_client, study, baseline_run=str(baseline.pk), proposed_run=str(unfinished.pk))
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Job.objects.exists()
