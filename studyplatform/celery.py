"""The Celery application. Tasks live in each app's tasks.py and report through the Job model (jobs.py)."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studyplatform.settings")

app = Celery("studyplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")


def _configure_filesystem_transport():
    from django.conf import settings

    if not settings.CELERY_BROKER_URL.startswith("filesystem://"):
        return
    queue_dir = settings.CELERY_DATA_DIR / "queue"
    processed_dir = settings.CELERY_DATA_DIR / "processed"
    queue_dir.mkdir(parents=True, exist_ok=True)
    processed_dir.mkdir(parents=True, exist_ok=True)
    app.conf.broker_transport_options = {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed_dir),
        "store_processed": False,
    }


app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)
_configure_filesystem_transport()
app.autodiscover_tasks()


@worker_ready.connect
def reap_on_start(**_):
    """Jobs left `running` by a worker that died are failed as soon as any worker comes up."""
    from studyplatform.jobs import reap_stale_jobs

    reap_stale_jobs()
