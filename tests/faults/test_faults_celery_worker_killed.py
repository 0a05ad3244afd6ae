"""A Celery worker killed in the middle of training: its Job ends failed with a message saying so, and the run
resumes from the last checkpoint the dead worker completed, continuing at the step after it."""

import re

import pytest

from generator.models import TrainingRun
from generator.registry import register_dataset
from generator.services import runs, training
from generator.services.requests import TrainingRequest
from generator.training.checkpoint import load_checkpoint, read_manifest
from jobs import runner
from jobs.models import Job
from tests.jobs.worker import WorkerProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.ml, pytest.mark.django_db(transaction=True)]

STEPS = {"parents": 2, "predictors": 2, "hvae": 2000, "counterfactual": 2}


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.ARTIFACTS_ROOT = tmp_path / "artifacts"
    return settings.ARTIFACTS_ROOT


def test_killed_training_worker_fails_the_job_and_the_run_resumes_from_its_checkpoint(artifacts, tmp_path):
    dataset = register_dataset(kind="phantom", root=tmp_path / "cache", resolution=32, options={"n": 60, "seed": 1})
    run = runs.create_training_run(dataset, "baseline", "test-32", seed=2, steps=STEPS)
    partial = runs.run_directory(run) / "hvae.partial.pt"
    worker = WorkerProcess(tmp_path / "worker.log", JOB_HEARTBEAT_SECONDS=0.5, ARTIFACTS_ROOT=artifacts)
    try:
        job = runs.start_training_job(TrainingRequest(run.name))
        # Let the worker complete the first stages and write a partial checkpoint of the HVAE stage.
        assert wait_for(lambda: partial.is_file() and load_checkpoint(partial)["step"] >= 5, timeout=150), (
            f"no HVAE checkpoint; worker log {worker.log.name}"
        )
        worker.kill()
    finally:
        worker.stop()

    checkpoint_step = load_checkpoint(partial)["step"]
    assert wait_for(lambda: runner.reap_stale_jobs(stale_after=2) or job_status(job) != Job.Status.RUNNING, timeout=20)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "worker lost" in job.message and job.finished_at is not None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "worker" in run.error
    # Only stages whose checkpoint was completely written are marked done; the HVAE stage is not.
    assert set(read_manifest(runs.run_directory(run))["stages"]) == {"parents", "predictors"}

    seen = []

    def record(stage, fraction, message=""):
        seen.append((stage, message))

    shorten_hvae_stage(run, checkpoint_step + 3)
    finished = training.run_training(TrainingRequest(run.name, resume=True), progress=record)
    first_hvae_step = next(int(m.group(1)) for s, msg in seen if s == "hvae" and (m := re.match(r"step (\d+)/", msg)))
    assert first_hvae_step == checkpoint_step + 1, "the resumed run did not continue from the checkpoint"
    assert not any(s in ("parents", "predictors") and msg.startswith("step ") for s, msg in seen)
    assert finished.status == "succeeded" and finished.checkpoints["final"]
    assert not partial.exists()


def job_status(job):
    job.refresh_from_db()
    return job.status


def shorten_hvae_stage(run, steps):
    """End the HVAE stage a few steps after the checkpoint so the test stays short (the stage length lives in the
    run's stored configuration)."""
    run.refresh_from_db()
    run.config["run"]["steps"]["hvae"] = steps
    TrainingRun.objects.filter(pk=run.pk).update(config=run.config)
    run.refresh_from_db()
