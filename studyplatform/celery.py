"""The Celery application. Tasks live in each app's tasks.py and report through the Job model of the jobs app."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyplatform.settings")

app = Celery("studyplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")


app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)
app.autodiscover_tasks()


@worker_ready.connect
def reap_on_start(**_):
    """Jobs left `running` by a worker that died are failed as soon as any worker comes up."""
    from jobs.runner import reap_stale_jobs

    reap_stale_jobs()
