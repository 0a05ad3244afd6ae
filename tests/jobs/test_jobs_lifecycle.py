"""Job states, progress, cancellation and the reaper, run in-process."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import runner
from jobs.models import Job

pytestmark = pytest.mark.django_db


def test_inline_job_succeeds_with_result_and_log():
    lines = []
    job = runner.run_inline("selftest", echo=lines.append, steps=4)
    assert job.status == Job.Status.SUCCEEDED
    assert job.result["steps"] == 4
    assert job.progress == 100
    assert job.message == "done"


def test_failing_job_records_error_and_traceback():
    job = runner.run_inline("selftest", steps=1, fail=True)
    assert job.status == Job.Status.FAILED
    assert "RuntimeError: selftest asked to fail" in job.message
    assert "Traceback" in job.error
    assert job.finished_at is not None


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown job kind"):
        runner.create_job("no-such-kind")


def test_queued_job_cancelled_never_runs():
    job = runner.create_job("selftest", steps=1)
    runner.request_cancel(job)
    runner.execute(str(job.pk))
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job.started_at is None


def test_job_runs_only_once():
    job = runner.create_job("selftest", steps=1)
    runner.execute(str(job.pk))
    first_finish = Job.objects.get(pk=job.pk).finished_at
    runner.execute(str(job.pk))
    assert Job.objects.get(pk=job.pk).finished_at == first_finish


def test_reaper_fails_only_silent_running_jobs():
    now = timezone.now()
    silent = Job.objects.create(kind="selftest", status="running", heartbeat_at=now - timedelta(seconds=120))
    alive = Job.objects.create(kind="selftest", status="running", heartbeat_at=now)
    done = Job.objects.create(kind="selftest", status="succeeded", heartbeat_at=now - timedelta(seconds=120))

    assert runner.reap_stale_jobs(stale_after=60) == 1

    assert Job.objects.get(pk=silent.pk).status == Job.Status.FAILED
    assert "worker lost" in Job.objects.get(pk=silent.pk).message
    assert Job.objects.get(pk=alive.pk).status == Job.Status.RUNNING
    assert Job.objects.get(pk=done.pk).status == Job.Status.SUCCEEDED


def test_a_reaped_job_stays_failed_when_its_worker_reports_late():
    job = runner.create_job("selftest", steps=1)
    Job.objects.filter(pk=job.pk).update(status="failed", message="worker lost")
    runner._finish(job, Job.Status.SUCCEEDED, result={})
    assert Job.objects.get(pk=job.pk).status == Job.Status.FAILED


def test_job_for_missing_row_is_skipped():
    runner.execute("00000000-0000-0000-0000-000000000000")


def test_admin_lists_jobs_with_progress_bar_and_cancels(admin_client):
    job = Job.objects.create(kind="selftest", status="queued", progress=40)
    response = admin_client.get("/admin/jobs/job/")
    assert response.status_code == 200
    assert b'<progress max="100" value="40"' in response.content

    response = admin_client.post(
        "/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.pk)]}, follow=True
    )
    assert response.status_code == 200
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED
