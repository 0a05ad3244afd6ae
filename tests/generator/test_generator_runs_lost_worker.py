"""A training run whose job's worker is lost ends `failed` with the job, not `running` forever."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generator.models import Dataset, TrainingRun
from jobs import runner
from jobs.models import Job

pytestmark = pytest.mark.django_db


def test_reaping_a_training_job_fails_its_run_and_leaves_other_runs_alone(settings, tmp_path):
    settings.ARTIFACTS_ROOT = tmp_path
    dataset = Dataset.objects.create(name="d", kind="phantom", root=str(tmp_path), resolution=32)
    silent = Job.objects.create(
        kind="train_generator", status="running", heartbeat_at=timezone.now() - timedelta(minutes=5)
    )
    alive = Job.objects.create(kind="train_generator", status="running", heartbeat_at=timezone.now())
    lost_run = TrainingRun.objects.create(name="lost", dataset=dataset, status="running", job=silent)
    busy_run = TrainingRun.objects.create(name="busy", dataset=dataset, status="running", job=alive)

    assert runner.reap_stale_jobs(stale_after=60) == 1

    lost_run.refresh_from_db()
    busy_run.refresh_from_db()
    assert lost_run.status == TrainingRun.Status.FAILED
    assert "worker" in lost_run.error
    assert busy_run.status == TrainingRun.Status.RUNNING
