"""Tables of evaluated runs: the admin's rows and the side-by-side comparison (Table 1 of the paper).

They read the metrics stored on the runs, so this module needs neither PyTorch nor the evaluation core and is safe
to import in the web process.
"""

from generator.evaluation.report import table_rows, write_report
from generator.services.runs import RunNotReady

# The figures the admin shows per evaluated checkpoint (the report files hold all of them).
ADMIN_COLUMNS = (
    "effectiveness_disease_auroc",
    "effectiveness_disease_accuracy",
    "training_predictors_disease_auroc",
    "composition_ssim",
    "composition_fid",
    "reversibility_ssim",
    "reversibility_fid",
    "effect_localisation",
    "removal_l1_model",
    "removal_l1_identity",
)


def model_label(run, checkpoint):
    """Table row name after the paper (Baseline, Ours+10%, ...), followed by the run name."""
    if checkpoint.startswith("round-"):
        fraction = run.config.get("run", {}).get("al_fraction", 0.1)
        percent = round(100 * fraction * int(checkpoint.split("-", 1)[1]))
        return f"Ours+{percent}% ({run.name})"
    names = {"baseline": "Baseline", "expert": "Ours (expert)", "expert-al": "Ours (expert, before AL)"}
    return f"{names.get(run.variant, run.variant)} ({run.name})"


def labelled_results(runs):
    """{row name: evaluation results} of every evaluated checkpoint of the runs, in run order."""
    return {model_label(run, label): results for run in runs for label, results in sorted(run.metrics.items())}


def metrics_rows(run):
    """Readable rows (label -> text) of the run's evaluated checkpoints: mean [95% interval]."""
    if not run.metrics:
        return []
    rows, columns = table_rows(labelled_results([run]))
    labels = {column.name: column.label for column in columns}
    readable = []
    for row in rows:
        entry = {"Model": row["model"]}
        for name in ADMIN_COLUMNS:
            mean, low, high = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")
            entry[labels.get(name, name)] = "-" if mean is None else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
        entry["n / seed"] = f"{row['n']} / {row['seed']}"
        readable.append(entry)
    return readable


def compare_runs(runs, out_dir):
    """Side-by-side Table-1-style report (CSV, JSON, Markdown) of every evaluated checkpoint of the given runs."""
    missing = [run.name for run in runs if not run.metrics]
    if missing:
        raise RunNotReady(f"evaluate these runs first (evaluate_generator RUN): {', '.join(missing)}")
    return write_report(labelled_results(runs), out_dir, stem="comparison")
