"""Training runs: create one with its full configuration, queue its training, find it and its checkpoints.

Every checkpoint is traceable to its run, preset, seed and code version. The admin and the job registry import this
module in the web process, which must not load PyTorch: the few functions that need the training core's stage names,
configuration class or code version import it when called. The training itself is in `training`.
"""

import json
import re
import secrets
import uuid
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from generator.models import Dataset, TrainingRun
from generator.training.presets import get_preset
from jobs import runner


class RunNotReady(ValueError):
    """The run has no checkpoint that can answer the request (not trained yet, failed, or an unknown round)."""


def run_directory(run):
    """Where a run's checkpoints, counterfactuals and reports live."""
    return Path(settings.ARTIFACTS_ROOT) / "runs" / run.name


def find_run(name_or_id):
    """A TrainingRun by name or primary key, or a ValueError naming what was asked for."""
    if isinstance(name_or_id, TrainingRun):
        return name_or_id
    found = TrainingRun.objects.filter(name=str(name_or_id)).first()
    if found is None:
        try:
            found = TrainingRun.objects.filter(pk=uuid.UUID(str(name_or_id))).first()
        except ValueError:
            found = None
    if found is None:
        raise ValueError(f"no training run named {name_or_id!r}")
    return found


def find_dataset(name):
    found = Dataset.objects.filter(name=name).first()
    if found is None:
        known = ", ".join(Dataset.objects.values_list("name", flat=True)) or "none registered"
        raise ValueError(f"no data set named {name!r} (known: {known})")
    return found


# --- creating a run and queueing its training -------------------------------------------------------------------------


def parse_steps(value):
    """`--steps 200` (every stage) or `--steps hvae=2000,counterfactual=500` -> {stage: steps}."""
    from generator.training.pipeline import STAGES

    if value in (None, "", {}):
        return {}
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items()}
    text = str(value).strip()
    if text.isdigit():
        return {stage: int(text) for stage in STAGES}
    steps = {}
    for part in text.split(","):
        stage, _, number = part.partition("=")
        if stage.strip() not in STAGES or not number.strip().isdigit():
            raise ValueError(f"steps {value!r}: expected N or stage=N,... with stages {', '.join(STAGES)}")
        steps[stage.strip()] = int(number)
    return steps


def create_training_run(
    dataset,
    variant="baseline",
    preset="cpu-64",
    *,
    seed=0,
    name=None,
    steps=None,
    budget=None,
    al_rounds=3,
    al_fraction=0.1,
):
    """A new TrainingRun (status created) with its full configuration; nothing is trained yet.

    `steps` is N (every stage) or {stage: N}; `budget` a wall-clock limit in seconds shared by the stages.
    """
    from generator.training.checkpoint import code_version
    from generator.training.pipeline import RunConfig

    try:
        preset_settings = get_preset(preset)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if al_rounds < 0 or not 0 <= al_fraction <= 1:
        raise ValueError("al_rounds must be >= 0 and al_fraction between 0 and 1")
    config = RunConfig(
        preset=preset,
        variant=variant,
        seed=int(seed),
        steps=parse_steps(steps),
        time_budget_s=float(budget) if budget else None,
        al_rounds=int(al_rounds),
        al_fraction=float(al_fraction),
    )
    name = name or f"{dataset.name}-{variant}-{preset}-s{seed}-{secrets.token_hex(2)}"
    if not re.fullmatch(r"[-a-zA-Z0-9_]+", name) or len(name) > 100:
        raise ValueError(f"run name {name!r}: use at most 100 letters, digits, '-' or '_'")
    if TrainingRun.objects.filter(name=name).exists():
        raise ValueError(f"a training run named {name!r} already exists (use --resume to continue it)")
    if run_directory(TrainingRun(name=name)).exists():
        raise ValueError(f"{run_directory(TrainingRun(name=name))} already exists; choose another run name")
    return TrainingRun.objects.create(
        name=name,
        dataset=dataset,
        variant=variant,
        preset=preset,
        seed=int(seed),
        config={"run": config.to_dict(), "preset": preset_settings.to_dict()},
        code_version=code_version(),
    )


def jsonable(value):
    """`value` with NumPy and PyTorch scalars turned into Python numbers, and anything else unknown into text."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def stage_plan(run):
    """The stages a run goes through, in order (progress bars and job percentages are built from it)."""
    from generator.training.pipeline import STAGES

    plan = ["data"]
    if run.variant != TrainingRun.Variant.BASELINE:
        plan.append("expert")
    plan += list(STAGES)
    if (run.config or {}).get("preset", {}).get("select_final"):
        plan.append("selection")
    if run.variant == TrainingRun.Variant.EXPERT_AL:
        plan.append("active-learning")
    return plan


def start_training_job(request):
    """Queue the TrainingRequest as a background Job and link the job to its run."""
    run = find_run(request.run)
    if run.job is not None and not run.job.is_finished:
        raise RunNotReady(f"run {run.name!r} already has an unfinished job {run.job.pk}")
    job = runner.enqueue("train_generator", **request.to_params())
    TrainingRun.objects.filter(pk=run.pk).update(job=job, updated_at=timezone.now())
    run.job = job
    return job


# --- checkpoints of a finished run ----------------------------------------------------------------------------------


def model_checkpoints(run):
    """Label -> path of every checkpoint that holds a full counterfactual model (the final stage and AL rounds)."""
    return {
        label: path
        for label, path in run.checkpoints.items()
        if label == "counterfactual" or label.startswith("round-")
    }


def resolve_checkpoint(run, checkpoint=None):
    """(label, path) of the requested checkpoint: None -> the run's final model, 'round-2' -> that AL round."""
    if checkpoint is None:
        if run.status != TrainingRun.Status.SUCCEEDED or "final" not in run.checkpoints:
            raise RunNotReady(f"run {run.name!r} has not finished training (status {run.status})")
        path = run.checkpoints["final"]
        label = next((k for k, v in model_checkpoints(run).items() if v == path), "final")
    elif checkpoint in model_checkpoints(run):
        label, path = checkpoint, run.checkpoints[checkpoint]
    else:
        available = ", ".join(sorted(model_checkpoints(run))) or "none"
        raise RunNotReady(f"run {run.name!r} has no checkpoint {checkpoint!r} (available: {available})")
    if not Path(path).is_file():
        raise RunNotReady(f"run {run.name!r}: checkpoint file {path} is missing")
    return label, path
