"""Celery discovers tasks here; the job kinds of the study app are defined in services and below."""

from jobs.runner import job_task
from studyplatform.requests import StimulusRequest


@job_task("generate_stimuli")
def generate_stimuli(ctx, **params):
    """Each model's counterfactuals for the study's cases (parameters: a StimulusRequest), imported through the
    study service; skipped cases are logged and listed in the result."""
    # The web process registers this job kind when it starts; the generator (PyTorch, Pyro) loads only when a worker
    # runs the job.
    from studyplatform import stimuli

    result = stimuli.generate_stimuli(
        StimulusRequest.from_params(params), progress=lambda fraction, message: ctx.progress(100 * fraction, message)
    )
    for label, reasons in result["skipped"].items():
        ctx.log(f"skipped {label}: {', '.join(reasons)}")
    for role, imported in result["imported"].items():
        ctx.log(f"{role}: attached {len(imported['attached'])}, unmatched {len(imported['unmatched'])}")
    return result
