"""When is a run trained enough? Stage step counts against the plan, in plain words.

Presets define step counts; a wall-clock budget only caps them. A stage the budget stops below half its planned steps
leaves the run under-trained, and the command output, the run's record, the admin, the evaluation report and the
demo summary say so. Free of torch and Django, so the web process can read it.
"""

UNDER_TRAINED_SHARE = 0.5  # a stage that ends below this share of its planned steps leaves the run under-trained


def under_trained_stages(stages):
    """{stage: {"steps", "planned_steps"}} of every stage a budget stopped below half its planned steps.

    `stages` maps a stage name to its metrics, which hold "steps" (reached) and "planned_steps".
    """
    return {
        stage: {"steps": int(metrics["steps"]), "planned_steps": int(metrics["planned_steps"])}
        for stage, metrics in stages.items()
        if "planned_steps" in metrics and metrics["steps"] < UNDER_TRAINED_SHARE * metrics["planned_steps"]
    }


def run_stages(summary):
    """Every part of a run's training summary that has a step plan, in training order: the proposed model's expert,
    the pipeline's stages and each active-learning round's fine-tuning ("round-1", ...)."""
    stages = {}
    if "planned_steps" in (summary.get("expert") or {}):
        stages["expert"] = summary["expert"]
    stages.update(summary.get("stages") or {})
    for record in (summary.get("active_learning") or {}).get("rounds", []):
        stages[f"round-{record['round']}"] = record.get("finetune") or {}
    return stages


def describe_under_training(under_trained):
    """Plain words for a run's under-trained stages, or "" when every stage reached half its steps."""
    if not under_trained:
        return ""
    parts = [f"{stage} {v['steps']} of {v['planned_steps']} steps" for stage, v in under_trained.items()]
    return (
        "UNDER-TRAINED: the time budget stopped "
        + ", ".join(parts)
        + "; its counterfactuals may barely change the image. Train longer (a larger budget, or none) before using "
        "them in a study."
    )


def describe_steps(stages):
    """One line: the steps each stage reached out of its plan, e.g. "hvae 4000/4000, counterfactual 812/1500"."""
    return ", ".join(
        f"{stage} {int(m['steps'])}/{int(m['planned_steps'])}" for stage, m in stages.items() if "planned_steps" in m
    )
