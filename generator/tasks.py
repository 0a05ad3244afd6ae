"""Background jobs of the generator: training, counterfactual generation, evaluation and study stimuli.

Each job takes plain JSON parameters (ids and names), calls one service function and reports progress through
`ctx`; the same functions run in the foreground from the management commands.
"""

import time

from generator.models import TrainingRun
from studyplatform.jobs import job_task

# The job kinds are registered wherever jobs are enqueued, the web process included, so this module imports the
# generator's services (and with them PyTorch and Pyro) only inside the tasks, where the work needs them.


def fail_runs_of_lost_jobs(sender, job_ids, **_):
    """A training job whose worker died leaves its run `failed` too (resumable from its last checkpoint)."""
    # The Job admin page reaps lost jobs in the web process: the generator is loaded only when a run was affected.
    if TrainingRun.objects.filter(job_id__in=job_ids, status=TrainingRun.Status.RUNNING).exists():
        _services().fail_runs_of_jobs(job_ids)


# A training step can take milliseconds: the job row (and the cancel flag) is visited at most this often per stage.
PROGRESS_INTERVAL_SECONDS = 1.0


def _services():
    from generator import services

    return services


def _run(run_id):
    return _services().find_run(run_id)


def stage_progress(ctx, run):
    """A progress(stage, fraction, message) callback that turns stages into one job percentage."""
    plan = _services().stage_plan(run)
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
def train_generator(ctx, run_id, resume=False):
    run = _run(run_id)
    ctx.log(f"training run {run.name} ({run.variant}, preset {run.preset}, seed {run.seed}) on {run.dataset.name}")
    run = _services().run_training(run, progress=stage_progress(ctx, run), resume=resume)
    ctx.log(f"run {run.name} succeeded; final checkpoint {run.checkpoints.get('final')}")
    return {"run": run.name, "status": run.status, "checkpoints": run.checkpoints}


@job_task("generate_counterfactuals")
def generate_counterfactuals(
    ctx, run_id, do, ids=None, images=None, out_dir=None, samples=1, checkpoint=None, seed=0, expert=None
):
    run = _run(run_id)
    folder, manifest = _services().generate_counterfactuals(
        run,
        do,
        ids=ids,
        image_files=images,
        out_dir=out_dir,
        samples=samples,
        checkpoint=checkpoint,
        seed=seed,
        expert=expert,
        progress=lambda fraction, message: ctx.progress(100 * fraction, message),
    )
    ctx.log(f"{len(manifest['items'])} counterfactuals written to {folder}")
    return {"run": run.name, "manifest": str(folder / "manifest.json"), "items": len(manifest["items"])}


@job_task("evaluate_generator")
def evaluate_generator(
    ctx, runs, checkpoint=None, n=256, seed=0, json_path=None, figures_dir=None, compare_dir=None, n_boot=1000
):
    """Evaluate runs; with `compare_dir`, evaluate only those not evaluated yet and write the side-by-side table."""
    runs = [_run(run) for run in runs]
    to_evaluate = [run for run in runs if not (compare_dir and run.metrics)]
    results = {}
    for index, run in enumerate(to_evaluate):

        def report(fraction, message, index=index, run=run):
            ctx.progress(100 * (index + fraction) / len(to_evaluate), f"{run.name}: {message}")

        results[run.name] = _services().evaluate_run(
            run,
            checkpoint,
            n=n,
            seed=seed,
            n_boot=n_boot,
            json_path=json_path if len(to_evaluate) == 1 else None,
            figures_dir=figures_dir if len(to_evaluate) == 1 else None,
            progress=report,
        )
        ctx.log(f"evaluated {run.name}: {', '.join(results[run.name])}")
    answer = {"evaluated": {name: sorted(by_label) for name, by_label in results.items()}}
    if compare_dir:
        for run in runs:
            run.refresh_from_db()
        answer["comparison"] = {k: str(v) for k, v in _services().compare_runs(runs, compare_dir).items()}
    return answer


@job_task("generate_stimuli")
def generate_stimuli(
    ctx,
    study_id,
    baseline_run,
    proposed_run,
    case_ids=None,
    baseline_checkpoint=None,
    proposed_checkpoint=None,
    samples=1,
    seed=0,
    expert=None,
    splits=None,
    screening=None,
):
    """Each model's counterfactuals for the study's cases, imported through the study service. Source images come
    from `splits` (default: test) and pass `screening` (None: the default rules; False: off); skipped cases are
    logged and listed in the result."""
    from studyplatform.models import Study

    study = Study.objects.get(pk=study_id)
    result = _services().generate_stimuli(
        study,
        _run(baseline_run),
        _run(proposed_run),
        case_ids=case_ids,
        checkpoints={"baseline": baseline_checkpoint, "proposed": proposed_checkpoint},
        samples=samples,
        seed=seed,
        expert=expert,
        splits=splits,
        screening=screening,
        progress=lambda fraction, message: ctx.progress(100 * fraction, message),
    )
    for label, reasons in result["skipped"].items():
        ctx.log(f"skipped {label}: {', '.join(reasons)}")
    for role, imported in result["imported"].items():
        ctx.log(f"{role}: attached {len(imported['attached'])}, unmatched {len(imported['unmatched'])}")
    return result
