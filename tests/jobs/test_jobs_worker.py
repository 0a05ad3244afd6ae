"""A real Celery worker process runs jobs end to end, and a worker that dies leaves its job failed."""

import os

import pytest
from django.conf import settings

from jobs import runner
from jobs.models import Job
from tests.jobs.worker import WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path):
    started = []

    def start(**env):
        process = WorkerProcess(tmp_path / f"worker-{len(started)}.log", **env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def status_of(job):
    job.refresh_from_db()
    return job.status


def test_enqueued_job_is_run_by_a_real_worker_and_succeeds(worker):
    process = worker()
    job = runner.enqueue("selftest", steps=3)

    finished = wait_for(lambda: status_of(job) in Job.FINISHED, timeout=90)

    assert finished, f"job still {job.status}; worker log:\n{process.log.name}"
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.result["steps"] == 3
    assert job.result["pid"] != os.getpid()
    assert job.progress == 100
    assert job.started_at <= job.finished_at
    assert settings.CELERY_BROKER_URL.split(":")[0] in {"filesystem", "redis"}


def test_job_of_a_killed_worker_ends_failed_within_bounded_time(worker):
    process = worker(JOB_HEARTBEAT_SECONDS=0.5)
    job = runner.enqueue("selftest", steps=10_000, sleep=0.05)
    assert wait_for(lambda: status_of(job) == Job.Status.RUNNING, timeout=90), "worker never started the job"
    assert wait_for(lambda: status_of(job) == Job.Status.RUNNING and job.progress > 0, timeout=30)

    process.kill()

    # The heartbeat stops with the worker; the reaper (run by every worker on start, by the Job admin and by
    # `manage.py reap_jobs`) fails the job once it is silent for the stale period.
    assert wait_for(lambda: runner.reap_stale_jobs(stale_after=3) or status_of(job) != Job.Status.RUNNING, timeout=20)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "worker lost" in job.message
    assert job.finished_at is not None


def test_cancelled_running_job_stops_at_next_progress_report(worker):
    worker()
    job = runner.enqueue("selftest", steps=10_000, sleep=0.05)
    assert wait_for(lambda: status_of(job) == Job.Status.RUNNING, timeout=90)

    runner.request_cancel(job)

    assert wait_for(lambda: status_of(job) == Job.Status.CANCELLED, timeout=30)
    assert job.progress < 100
