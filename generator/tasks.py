"""Background jobs of the generator: training, counterfactual generation and evaluation.

Each job's parameters are its request dataclass (generator.services.requests); the task rebuilds the request,
calls one service function and reports progress through `ctx`. The management commands hand the same requests to
the same functions in the foreground.
"""

import time

from generator.models import TrainingRun
from generator.services import runs
from generator.services.requests import CounterfactualRequest, EvaluationRequest, TrainingRequest
from jobs.runner import job_task

# The job kinds are registered wherever jobs are enqueued, the web process included, so the services that load
# PyTorch and Pyro (training, counterfactuals, evaluation) are imported inside the tasks that need them.

# A training step can take milliseconds: the job row (and the cancel flag) is visited at most this often per stage.
PROGRESS_INTERVAL_SECONDS = 1.0


def fail_runs_of_lost_jobs(sender, job_ids, **_):
    """A training job whose worker died leaves its run `failed` too (resumable from its last checkpoint)."""
    # The Job admin reaps lost jobs in the web process: the training service is loaded only when a run was affected.
    if TrainingRun.objects.filter(job_id__in=job_ids, status=TrainingRun.Status.RUNNING).exists():
        from generator.services import training

        training.fail_runs_of_jobs(job_ids)


def stage_progress(ctx, run):
    """A progress(stage, fraction, message) callback that turns stages into one job percentage."""
    plan = runs.stage_plan(run)
    last = {"stage": None, "at": 0.0}

    def report(stage, fraction, message=""):
        now = time.monotonic()
        if stage == last["stage"] and fraction < 1 and now - last["at"] < PROGRESS_INTERVAL_SECONDS:
            return
        last.update(stage=stage, at=now)
        if stage not in plan:
            plan.append(stage)
        percent = 100.0 * (plan.index(stage) + min(max(fraction, 0.0), 1.0)) / len(plan)
        ctx.progress(min(percent, 99.9), f"{stage}: {message}")

    return report


@job_task("train_generator")
def train_generator(ctx, **params):
    from generator.services import training

    request = TrainingRequest.from_params(params)
    run = runs.find_run(request.run)
    ctx.log(f"training run {run.name} ({run.variant}, preset {run.preset}, seed {run.seed}) on {run.dataset.name}")
    run = training.run_training(request, progress=stage_progress(ctx, run))
    ctx.log(f"run {run.name} succeeded; final checkpoint {run.checkpoints.get('final')}")
    return {"run": run.name, "status": run.status, "checkpoints": run.checkpoints}


@job_task("generate_counterfactuals")
def generate_counterfactuals(ctx, **params):
    from generator.services import counterfactuals

    request = CounterfactualRequest.from_params(params)
    folder, manifest = counterfactuals.generate_counterfactuals(
        request, progress=lambda fraction, message: ctx.progress(100 * fraction, message)
    )
    ctx.log(f"{len(manifest['items'])} counterfactuals written to {folder}")
    return {"run": manifest["run"], "manifest": str(folder / "manifest.json"), "items": len(manifest["items"])}


@job_task("evaluate_generator")
def evaluate_generator(ctx, **params):
    """Evaluate runs; with `compare`, evaluate only those not evaluated yet and write the side-by-side table."""
    from generator.services import evaluation

    request = EvaluationRequest.from_params(params)
    outcome = evaluation.evaluate(request, progress=lambda fraction, message: ctx.progress(100 * fraction, message))
    for name, by_label in outcome["evaluated"].items():
        ctx.log(f"evaluated {name}: {', '.join(by_label)}")
    answer = {"evaluated": {name: sorted(by_label) for name, by_label in outcome["evaluated"].items()}}
    if outcome["comparison"]:
        answer["comparison"] = outcome["comparison"]
    return answer
