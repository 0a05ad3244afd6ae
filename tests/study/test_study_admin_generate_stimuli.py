"""From the study admin a researcher picks two finished training runs and queues the stimulus-generation job."""

import pytest

from generator.models import Dataset, TrainingRun
from jobs.models import Job
from studyplatform.models import AuditLog
from tests.study.factories import StudyFactory, complete_study

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
        "splits": ["test"],  # held-out images only, with the default screening, unless the researcher says otherwise
        "screening": {},
        # the rest of the StimulusRequest, at its defaults: every case, each run's final model, the proposed expert
        "case_ids": [],
        "baseline_checkpoint": None,
        "proposed_checkpoint": None,
        "expert": None,
    }
    assert AuditLog.objects.filter(action="stimuli.generate").count() == 1


def test_an_unfinished_run_is_refused_and_nothing_is_queued(admin_client, runs, media_root):
    baseline, _, unfinished = runs
    study = StudyFactory()
    response = post_action(admin_client, study, baseline_run=str(baseline.pk), proposed_run=str(unfinished.pk))
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Job.objects.exists()


def test_the_researcher_can_allow_other_splits_and_relax_or_turn_off_the_screening(admin_client, runs, media_root):
    baseline, proposed, _ = runs
    study = StudyFactory()
    page = post_action(admin_client, study).content.decode()
    assert "held-out test split" in page and "adult patient (18 or older)" in page
    chosen = {"baseline_run": str(baseline.pk), "proposed_run": str(proposed.pk), "samples": 1, "seed": 0}

    post_action(admin_client, study, **chosen, extra_splits=["train"], allow_children="on", allow_blank_border="on")
    job = Job.objects.get()
    assert job.params["splits"] == ["test", "train"]
    assert job.params["screening"] == {"min_age": None, "max_blank_border": None}

    post_action(admin_client, study, **chosen, no_screening="on")
    assert Job.objects.order_by("-created_at").first().params["screening"] is False


def test_each_model_field_offers_only_runs_of_its_variant(admin_client, runs, media_root):
    baseline, proposed, _ = runs
    other_baseline = finished_run(baseline.dataset, "base-2", "baseline")
    expert_only = finished_run(baseline.dataset, "expert-only", "expert")
    form = post_action(admin_client, StudyFactory()).context["form"]
    assert set(form.fields["baseline_run"].queryset) == {baseline, other_baseline}
    assert set(form.fields["proposed_run"].queryset) == {proposed, expert_only}


def test_a_baseline_run_is_refused_as_the_proposed_model(admin_client, runs, media_root):
    baseline, _, _ = runs
    response = post_action(admin_client, StudyFactory(), baseline_run=str(baseline.pk), proposed_run=str(baseline.pk))
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not Job.objects.exists()


def test_an_open_study_is_refused_with_a_message_and_no_form(admin_client, runs, media_root):
    baseline, proposed, _ = runs
    study = complete_study()
    for data in ({}, {"baseline_run": str(baseline.pk), "proposed_run": str(proposed.pk), "samples": 1, "seed": 0}):
        response = post_action(admin_client, study, **data)
        assert response.status_code == 302
        page = admin_client.get(response["Location"]).content.decode()
        assert "its stimulus set is frozen; counterfactual stimuli can only be generated for a draft study" in page
    assert not Job.objects.exists()


def test_the_study_page_shows_the_progress_of_its_generation_job(admin_client, runs, media_root):
    baseline, proposed, _ = runs
    study = StudyFactory()
    page = admin_client.get(f"/admin/studyplatform/study/{study.pk}/change/").content.decode()
    assert "Counterfactual generation" in page and "none yet" in page

    chosen = {"baseline_run": str(baseline.pk), "proposed_run": str(proposed.pk), "samples": 1, "seed": 0}
    response = post_action(admin_client, study, **chosen)
    assert response["Location"] == f"/admin/studyplatform/study/{study.pk}/change/"
    job = Job.objects.get()
    Job.objects.filter(pk=job.pk).update(status="running", progress=42.4, message="proposed: 5/12 counterfactuals")
    page = admin_client.get(response["Location"]).content.decode()
    assert '<progress max="100" value="42"' in page and "42%" in page
    assert "proposed: 5/12 counterfactuals" in page and f"/admin/jobs/job/{job.pk}/change/" in page
    assert "Reload the page to follow the progress." in page
    other = StudyFactory()
    assert "none yet" in admin_client.get(f"/admin/studyplatform/study/{other.pk}/change/").content.decode()
