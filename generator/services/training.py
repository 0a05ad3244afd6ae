"""Training a run: load its data set, train stage by stage, record progress and the checkpoints of finished stages.

The worker and the foreground command import this module; the web process never does (it loads PyTorch).
"""

import os
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from generator.data import load_splits
from generator.models import TrainingRun
from generator.services.runs import find_run, jsonable, run_directory
from generator.training.checkpoint import code_version, read_manifest
from generator.training.pipeline import RunConfig
from generator.training.presets import Preset
from generator.training.trainer import apply_thread_policy
from generator.training.variants import train_variant

# A stored loss curve keeps at most this many points per stage (paper-192 logs tens of thousands).
HISTORY_POINTS = 500


def load_run_splits(dataset, resolution):
    """The train/valid/test splits of a registered data set at the model's resolution, or a clear error."""
    try:
        splits = load_splits(dataset.kind, dataset.root, resolution, dict(dataset.options or {}))
    except Exception as exc:
        raise ValueError(f"data set {dataset.name!r} ({dataset.kind} at {dataset.root}) cannot be read: {exc}") from exc
    missing = {"train", "valid", "test"} - set(splits)
    if missing:
        raise ValueError(f"data set {dataset.name!r}: the loader returned no {', '.join(sorted(missing))} split")
    return splits


def run_training(request, progress=None):
    """Train (or resume) the run of a TrainingRequest stage by stage; returns the run with status succeeded.

    `progress(stage, fraction, message)` is called as the stages advance (tqdm bars, job progress). On any error
    the run is marked failed with the error text, only stages whose checkpoint was completely written stay
    recorded, and the exception propagates. Under torchrun only rank 0 writes to the database (and to disk).
    """
    run = find_run(request.run)
    out_dir = run_directory(run)
    if not is_main_process():
        _train(run, out_dir, progress, request.resume)
        return run
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if not request.resume and (run.checkpoints or (out_dir / "run.json").exists()):
            raise ValueError(f"run {run.name!r} has already trained stages in {out_dir}; resume it instead")
        run.status, run.error, run.stage = TrainingRun.Status.RUNNING, "", "data"
        run.code_version = code_version()
        run.save(update_fields=["status", "error", "stage", "code_version", "updated_at"])
    try:
        summary = _train(run, out_dir, _StageRecorder(run, out_dir, progress), request.resume)
    except BaseException as exc:
        _finish_failed(run, out_dir, exc)
        raise
    return _finish_succeeded(run, out_dir, summary)


def is_main_process():
    return int(os.environ.get("RANK", "0")) == 0


def _train(run, out_dir, progress, resume):
    progress = progress or (lambda stage, fraction, message="": None)
    threads = apply_thread_policy()
    progress("data", 0.0, f"{threads} torch thread(s), load {os.getloadavg()[0]:.1f}")
    progress("data", 0.0, f"loading data set {run.dataset.name}")
    config = RunConfig.from_dict(run.config["run"])
    # The snapshot stored when the run was created, never the registry: a preset edited since then changes nothing
    preset = Preset.from_dict(run.config["preset"])
    splits = load_run_splits(run.dataset, preset.resolution)
    progress("data", 1.0, ", ".join(f"{name} {len(split.x)}" for name, split in splits.items()))
    return train_variant(config, preset, splits, out_dir, progress=progress, resume=resume)


class _StageRecorder:
    """Progress callback: stores the current stage on the run and the checkpoints of completed stages."""

    def __init__(self, run, out_dir, forward):
        self.run, self.out_dir, self.forward = run, out_dir, forward
        self.stage = None

    def __call__(self, stage, fraction, message=""):
        if stage != self.stage:
            self.stage = stage
            TrainingRun.objects.filter(pk=self.run.pk).update(
                stage=stage, checkpoints=completed_checkpoints(self.out_dir), updated_at=timezone.now()
            )
        if self.forward is not None:
            self.forward(stage, fraction, message)


def completed_checkpoints(out_dir):
    """Stage -> checkpoint path of every stage the run manifest marks complete (never a partial file)."""
    stages = read_manifest(out_dir).get("stages", {})
    return {stage: record["checkpoint"] for stage, record in stages.items() if Path(record["checkpoint"]).is_file()}


def _thin(history):
    """At most HISTORY_POINTS evenly spaced points of a loss curve, first and last included."""
    if len(history) <= HISTORY_POINTS:
        return history
    last = len(history) - 1
    keep = sorted({round(i * last / (HISTORY_POINTS - 1)) for i in range(HISTORY_POINTS)})
    return [history[i] for i in keep]


def _finish_succeeded(run, out_dir, summary):
    checkpoints = completed_checkpoints(out_dir)
    checkpoints.update({k: str(v) for k, v in summary.get("checkpoints", {}).items()})
    checkpoints["final"] = str(summary["checkpoint"])
    history = {stage: _thin(points) for stage, points in summary.get("history", {}).items()}
    extra = {k: v for k, v in summary.items() if k not in ("history", "checkpoints", "checkpoint", "out_dir")}
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.SUCCEEDED,
        stage="done",
        code_version=read_manifest(out_dir).get("code_version", run.code_version),
        history=jsonable({**history, "summary": extra}),
        under_trained=jsonable(summary.get("under_trained", {})),
        checkpoints=checkpoints,
        error="",
        updated_at=timezone.now(),
    )
    run.refresh_from_db()
    return run


def _finish_failed(run, out_dir, exc):
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.FAILED,
        error=message,
        checkpoints=completed_checkpoints(out_dir),
        updated_at=timezone.now(),
    )


def fail_runs_of_jobs(job_ids):
    """Mark the running training runs of these (lost) jobs failed, keeping only completely written checkpoints."""
    for run in TrainingRun.objects.filter(job_id__in=job_ids, status=TrainingRun.Status.RUNNING):
        _finish_failed(run, run_directory(run), RuntimeError("the worker running this training was lost"))
