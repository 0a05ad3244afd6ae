"""Background jobs: enqueue, run, report progress, cancel, and fail jobs whose worker died.

A task function is written once against `JobContext` and runs the same way from a Celery worker (`enqueue`) or in
the foreground of a management command (`run_inline`). Every state change of a Job goes through this module.
"""

import logging
import os
import socket
import threading
import traceback
from datetime import timedelta

from celery import shared_task
from celery.signals import task_failure
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.dispatch import Signal
from django.utils import timezone

from jobs.models import Job

logger = logging.getLogger(__name__)
LOG_TAIL_LINES = 200
_REGISTRY = {}

# Sent with `job_ids` when jobs are failed from outside their task (worker lost), so the owners of the work a job
# was doing (a training run, say) can record the failure too; the task itself never got to.
worker_lost = Signal()


class JobCancelled(Exception):
    """Raised inside a task when a researcher asked for the job to stop."""


class JobContext:
    """What a running task sees of its Job: progress, log lines and the cancel flag."""

    def __init__(self, job_id, echo=None):
        self.job_id = job_id
        self.echo = echo
        self._lines = []

    def progress(self, percent, message=None):
        """Record progress (0-100) and raise JobCancelled if a cancel was requested."""
        fields = {"progress": max(0.0, min(100.0, float(percent))), "heartbeat_at": timezone.now()}
        if message is not None:
            fields["message"] = str(message)[:500]
        Job.objects.filter(pk=self.job_id).update(**fields)
        self.check_cancelled()

    def log(self, line):
        line = str(line)
        logger.info("job=%s %s", self.job_id, line)
        if self.echo:
            self.echo(line)
        self._lines = (self._lines + line.splitlines())[-LOG_TAIL_LINES:]
        Job.objects.filter(pk=self.job_id).update(log_tail="\n".join(self._lines), heartbeat_at=timezone.now())

    def check_cancelled(self):
        if Job.objects.filter(pk=self.job_id, cancel_requested=True).exists():
            raise JobCancelled("cancelled at the researcher's request")


def job_task(kind):
    """Register `fn(ctx, **params)` as the task behind jobs of this kind."""

    def decorate(fn):
        @shared_task(name=f"jobs.{kind}")
        def celery_entry(job_id):
            # A worker process is long-lived: drop connections the database closed meanwhile.
            close_old_connections()
            execute(job_id)

        _REGISTRY[kind] = (fn, celery_entry)
        fn.kind = kind
        return fn

    return decorate


def create_job(kind, **params):
    if kind not in _REGISTRY:
        raise ValueError(f"unknown job kind {kind!r}")
    return Job.objects.create(kind=kind, params=params)


def enqueue(kind, **params):
    """Create a queued Job and send it to the workers once the surrounding transaction commits."""
    job = create_job(kind, **params)
    _, celery_entry = _REGISTRY[kind]

    def send():
        result = celery_entry.apply_async(args=[str(job.pk)])
        Job.objects.filter(pk=job.pk).update(celery_task_id=result.id or "")

    transaction.on_commit(send)
    return job


def run_inline(kind, echo=None, **params):
    """Run a job in this process (management commands without --background). Returns the finished Job."""
    job = create_job(kind, **params)
    execute(str(job.pk), echo=echo)
    job.refresh_from_db()
    return job


def _claim(job_id):
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            logger.warning("job=%s does not exist (deleted, or a message from another database); skipped", job_id)
            return None
        if job.status != Job.Status.QUEUED:
            return None
        if job.cancel_requested:
            _finish(job, Job.Status.CANCELLED, message="cancelled before it started")
            return None
        now = timezone.now()
        job.status = Job.Status.RUNNING
        job.started_at = now
        job.heartbeat_at = now
        job.worker = f"{socket.gethostname()}:{os.getpid()}"
        job.save(update_fields=["status", "started_at", "heartbeat_at", "worker"])
        return job


def _finish(job, status, message=None, result=None, error=""):
    fields = {"status": status, "finished_at": timezone.now(), "error": error}
    if message is not None:
        fields["message"] = str(message)[:500]
    if status == Job.Status.SUCCEEDED:
        fields["progress"] = 100.0
        fields["result"] = result
    # Only a job that is still running may be finished: a reaped job stays failed even if its worker wakes up.
    updated = Job.objects.filter(pk=job.pk).exclude(status__in=Job.FINISHED).update(**fields)
    logger.info("job=%s kind=%s finished status=%s", job.pk, job.kind, status if updated else "already-final")


class _Heartbeat(threading.Thread):
    def __init__(self, job_id):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id = job_id
        self.stopped = threading.Event()

    def run(self):
        try:
            while not self.stopped.wait(settings.JOB_HEARTBEAT_SECONDS):
                Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())
        finally:
            connection.close()


def execute(job_id, echo=None):
    job = _claim(job_id)
    if job is None:
        return
    fn, _ = _REGISTRY[job.kind]
    logger.info("job=%s kind=%s started worker=%s", job.pk, job.kind, job.worker)
    heartbeat = _Heartbeat(job.pk)
    heartbeat.start()
    ctx = JobContext(job.pk, echo=echo)
    try:
        result = fn(ctx, **job.params)
    except JobCancelled as exc:
        _finish(job, Job.Status.CANCELLED, message=str(exc))
    except Exception as exc:
        logger.exception("job=%s failed", job.pk)
        _finish(job, Job.Status.FAILED, message=f"{type(exc).__name__}: {exc}", error=traceback.format_exc())
    else:
        _finish(job, Job.Status.SUCCEEDED, message="done", result=result)
    finally:
        heartbeat.stopped.set()
        heartbeat.join(timeout=5)


def request_cancel(job):
    """Ask a job to stop. A queued job is cancelled at once; a running one stops at its next progress report."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            return job
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested"])
        if job.status == Job.Status.QUEUED:
            _finish(job, Job.Status.CANCELLED, message="cancelled before it started")
    job.refresh_from_db()
    return job


def reap_stale_jobs(stale_after=None):
    """Fail every running job whose heartbeat is older than `stale_after` seconds: its worker is gone."""
    stale_after = settings.JOB_STALE_AFTER if stale_after is None else stale_after
    cutoff = timezone.now() - timedelta(seconds=stale_after)
    stale = Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff)
    reaped = []
    for job in stale:
        if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, heartbeat_at__lt=cutoff).update(
            status=Job.Status.FAILED,
            finished_at=timezone.now(),
            message=f"worker lost: no heartbeat for more than {stale_after:.0f} s (worker {job.worker})",
            error="The process running this job stopped without reporting (killed, out of memory or host lost).",
        ):
            reaped.append(job.pk)
    if reaped:
        logger.warning("reaped %d stale job(s): %s", len(reaped), ", ".join(map(str, reaped)))
        worker_lost.send(sender=Job, job_ids=reaped)
    return len(reaped)


@task_failure.connect
def fail_job_on_worker_lost(sender=None, args=None, exception=None, **_):
    """Celery reports a child process that died (WorkerLostError) in the parent: fail the job right away."""
    if not sender or not str(getattr(sender, "name", "")).startswith("jobs.") or not args:
        return
    if (
        Job.objects.filter(pk=args[0])
        .exclude(status__in=Job.FINISHED)
        .update(
            status=Job.Status.FAILED,
            finished_at=timezone.now(),
            message=f"worker lost: {type(exception).__name__}: {exception}"[:500],
            error=str(exception),
        )
    ):
        worker_lost.send(sender=Job, job_ids=[args[0]])
