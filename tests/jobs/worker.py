"""Start a real Celery worker process against the test database and the configured broker."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def worker_environment(**overrides):
    db = connection.settings_dict
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{Path(db['NAME']).resolve()}"
    else:
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["CELERY_DATA_DIR"] = str(settings.CELERY_DATA_DIR)
    env["VAR_DIR"] = str(settings.VAR_DIR)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def purge_queue():
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        shutil.rmtree(settings.CELERY_DATA_DIR / "queue", ignore_errors=True)
        (settings.CELERY_DATA_DIR / "queue").mkdir(parents=True, exist_ok=True)
    else:
        from studyplatform.celery import app

        app.control.purge()


class WorkerProcess:
    def __init__(self, log_path, **env_overrides):
        purge_queue()
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "studyplatform", "worker", "--concurrency=1", "--loglevel=INFO"],
            cwd=ROOT,
            env=worker_environment(**env_overrides),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self):
        """SIGKILL the whole worker (parent and pool children): nothing gets to clean up."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def wait_for(predicate, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
