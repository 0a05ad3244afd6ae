"""Counterfactual stimuli for a study's cases, made by the generator's public services and attached to the cases.

The study app owns the cases and their stimuli; the generator is asked only for counterfactual images of data-set
images (`generator.services.counterfactuals`) and for which images may become stimuli
(`generator.services.stimuli`).
"""

from django.utils import timezone

from generator.services.counterfactuals import generate_counterfactuals
from generator.services.requests import CounterfactualRequest
from generator.services.runs import find_run, run_directory
from generator.services.stimuli import check_stimulus_splits, screen_dataset_images
from studyplatform import services
from studyplatform.models import Case, Study


def generate_stimuli(request, progress=None):
    """Both models' counterfactuals of the study's cases, attached through the study's manifest import.

    Every case with a data-set `source_id` (or those in `case_ids`) gets each model's counterfactual under
    do(disease := the case's counterfactual condition). Both models see the same images under the same seeds and
    are annotated by the same expert (the proposed run's own when it has one), so their stimuli differ only by
    the model. Each case records its split and its screening result; a case that fails is skipped (no
    counterfactuals) with its reasons.
    Returns {"folders": {role: path}, "imported": {role: import result}, "splits": {case: split},
    "skipped": {case: [reasons]}}.
    """
    study = Study.objects.get(pk=request.study_id)
    runs = {"baseline": find_run(request.baseline_run), "proposed": find_run(request.proposed_run)}
    checkpoints = {"baseline": request.baseline_checkpoint, "proposed": request.proposed_checkpoint}
    allowed = check_stimulus_splits(request.splits)
    report = progress or (lambda fraction, message: None)
    cases = Case.objects.filter(study=study).exclude(source_id="").order_by("block", "position", "label")
    if request.case_ids:
        cases = cases.filter(pk__in=request.case_ids)
    cases = list(cases)
    if not cases:
        raise ValueError(f"study {study.slug!r} has no case with a data-set image id to make counterfactuals of")
    checks = screen_dataset_images(
        runs["baseline"].dataset,
        [case.source_id for case in cases],
        splits=allowed,
        screening=request.screening,
    )
    skipped = {}
    for case in cases:
        check = checks[case.source_id]
        services.record_case_source(case, split=check["split"], screening=check)
        if not check["passed"]:
            skipped[case.label] = check["reasons"]
    summary = "; ".join(f"{label}: {', '.join(reasons)}" for label, reasons in skipped.items())
    if len(skipped) == len(cases):
        raise ValueError(f"no case of study {study.slug!r} can become a stimulus: {summary}")
    passed = f"{len(cases) - len(skipped)} of {len(cases)} cases passed the screening"
    report(0.0, passed + (f"; skipped {summary}" if summary else ""))
    # One counterfactual per (image, condition): a Block-1 patient and a Block-2 case may share an image.
    wanted = sorted({(case.source_id, case.cf_condition) for case in cases if case.label not in skipped})
    expert = request.expert
    if expert is None and (run_directory(runs["proposed"]) / "expert.pt").is_file():
        expert = str(run_directory(runs["proposed"]) / "expert.pt")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    folders, imported = {}, {}
    for index, (role, run) in enumerate(runs.items()):
        folder, _ = generate_counterfactuals(
            CounterfactualRequest(
                run=run.name,
                do=[{"disease": condition} for _, condition in wanted],
                ids=[source_id for source_id, _ in wanted],
                out_dir=str(run_directory(run) / "stimuli" / f"{study.slug}-{role}-{stamp}"),
                samples=request.samples,
                checkpoint=checkpoints[role],
                seed=request.seed,
                expert=expert,
                model_role=role,
            ),
            progress=lambda f, m, index=index, role=role: report(0.5 * (index + f), f"{role}: {m}"),
        )
        folders[role] = str(folder)
        imported[role] = services.import_counterfactual_manifest(study, folder, model_role=role)
    if skipped:
        report(1.0, f"done; skipped {len(skipped)} case(s) without counterfactuals: {summary}")
    return {
        "folders": folders,
        "imported": imported,
        "splits": {case.label: checks[case.source_id]["split"] for case in cases},
        "skipped": skipped,
    }
