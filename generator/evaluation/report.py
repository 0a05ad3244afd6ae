"""Table-1-style comparison of evaluated models, written as CSV, JSON and Markdown.

Input: {model name: evaluate_model(...) result}, e.g. {"Baseline": ..., "Ours+10%": ..., "Ours+20%": ...}.
One row per model. The first five value columns are the paper's Table 1 (effectiveness on the disease,
composition SSIM/FID, reversibility SSIM/FID); the others hold every further figure. Each value column comes with
its 95% bootstrap interval (`<column>_lo`, `<column>_hi`) in the CSV and JSON.
"""

import csv
import json
import os
from dataclasses import dataclass

TABLE1 = (
    "effectiveness_disease_auroc",
    "composition_ssim",
    "composition_fid",
    "reversibility_ssim",
    "reversibility_fid",
)


@dataclass(frozen=True)
class Column:
    name: str
    label: str
    path: tuple  # keys into an evaluate_model result, ending at a {"mean", "ci95"} summary


def _fixed_columns():
    columns = [
        Column(
            "effectiveness_disease_auroc",
            "Effectiveness (disease, AUROC)",
            ("effectiveness", "evaluation_predictors", "disease", "auroc"),
        ),
        Column("composition_ssim", "Composition SSIM", ("composition", "repeats_1", "ssim")),
        Column("composition_fid", "Composition FID", ("composition", "repeats_1", "fid")),
        Column("reversibility_ssim", "Reversibility SSIM", ("reversibility", "cycles_1", "ssim")),
        Column("reversibility_fid", "Reversibility FID", ("reversibility", "cycles_1", "fid")),
        Column(
            "effectiveness_disease_accuracy",
            "Effectiveness (disease, accuracy)",
            ("effectiveness", "evaluation_predictors", "disease", "accuracy"),
        ),
        Column(
            "training_predictors_disease_auroc",
            "Effectiveness by the TRAINING predictors (disease, AUROC)",
            ("effectiveness", "training_predictors", "disease", "auroc"),
        ),
        Column(
            "evaluation_predictors_real_disease_auroc",
            "Evaluation predictors on real images (disease, AUROC)",
            ("predictors_on_observations", "evaluation_predictors", "disease", "auroc"),
        ),
    ]
    for block, key, label in (("composition", "repeats", "Composition"), ("reversibility", "cycles", "Reversibility")):
        for count in (1, 10) if block == "composition" else (1, 5):
            for metric in ("l1", "ssim", "fid"):
                name = f"{block}_{metric}" if count == 1 else f"{block}_{metric}_{count}"
                if name in TABLE1:
                    continue
                columns.append(
                    Column(name, f"{label} {metric.upper()} ({key} {count})", (block, f"{key}_{count}", metric))
                )
    columns.append(Column("effect_localisation", "Effect localisation (share inside)", ("effect_localisation", "all")))
    removal = ("true_counterfactual_error", "removal")
    for metric in ("l1", "ssim"):
        for answer in ("model", "identity"):
            columns.append(
                Column(
                    f"removal_{metric}_{answer}",
                    f"Removal {metric.upper()} vs true cf ({answer})",
                    (*removal, f"{metric}_{answer}"),
                )
            )
    return columns


def _dynamic_columns(results):
    """Columns that depend on the graph and data: further parents, additions per class, expert probabilities."""
    columns = []
    for result in results.values():
        for parent, figures in (result.get("effectiveness", {}).get("evaluation_predictors") or {}).items():
            for metric in figures:
                if parent != "disease":
                    columns.append(
                        Column(
                            f"effectiveness_{parent}_{metric}",
                            f"Effectiveness ({parent}, {metric})",
                            ("effectiveness", "evaluation_predictors", parent, metric),
                        )
                    )
        for intervention, figures in ((result.get("true_counterfactual_error") or {}).get("additions") or {}).items():
            target = intervention.split("=")[-1].rstrip(")")
            for metric in figures:
                columns.append(
                    Column(
                        f"addition_{target}_{metric}",
                        f"Addition {target}: {metric}",
                        ("true_counterfactual_error", "additions", intervention, metric),
                    )
                )
        for condition, findings in (result.get("expert_probability_shift") or {}).items():
            for finding in findings:
                columns.append(
                    Column(
                        f"expert_p_{finding.lower()}_{_slug(condition)}",
                        f"Expert P({finding}) on {condition}",
                        ("expert_probability_shift", condition, finding),
                    )
                )
    unique = {}
    for column in columns:
        unique.setdefault(column.name, column)
    return list(unique.values())


def _slug(text):
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").replace("__", "_")


def report_columns(results):
    return _fixed_columns() + _dynamic_columns(results)


def _lookup(result, path):
    node = result
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return node


def table_rows(results):
    """One dict per model: "model", "seed", "n", then per column its mean and `_lo`/`_hi` bounds (None if absent)."""
    columns = report_columns(results)
    rows = []
    for model_name, result in results.items():
        row = {"model": model_name, "seed": result.get("seed"), "n": result.get("n")}
        row["judgement"] = result.get("judgement")
        for column in columns:
            summary = _lookup(result, column.path)
            mean, (low, high) = (summary["mean"], summary["ci95"]) if summary else (None, (None, None))
            row[column.name], row[f"{column.name}_lo"], row[f"{column.name}_hi"] = mean, low, high
        rows.append(row)
    return rows, columns


def _format(value, low=None, high=None):
    if value is None:
        return "-"
    text = _number(value)
    if low is not None and high is not None:
        text += f" [{_number(low)}, {_number(high)}]"
    return text


def _number(value):
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4f}"


def judgement_lines(rows):
    """What the figures can say, before the figures: the judges' accuracy on real images and every warning."""
    lines = []
    for row in rows:
        judgement = row.get("judgement") or {}
        auroc = judgement.get("judge_auroc_on_real")
        if auroc:
            lines.append(
                f"- {row['model']}: evaluation judges on real images, disease AUROC "
                f"{_format(auroc['mean'], *auroc['ci95'])}; mean |x_cf - x| under do(disease) "
                f"{_number(judgement['mean_abs_change'])}"
            )
        lines += [f"- **{row['model']}: {warning}**" for warning in judgement.get("warnings", [])]
    return lines + [""] if lines else []


def markdown(rows, columns):
    """Table 1 (one row per model) and a second table with every further figure (one row per figure)."""
    main = [c for c in columns if c.name in TABLE1]
    lines = judgement_lines(rows)
    lines += ["| Model | " + " | ".join(c.label for c in main) + " |", "|---" * (len(main) + 1) + "|"]
    for row in rows:
        cells = [_format(row[c.name], row[f"{c.name}_lo"], row[f"{c.name}_hi"]) for c in main]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    lines += ["", "| Figure | " + " | ".join(row["model"] for row in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for column in columns:
        if column.name in TABLE1:
            continue
        cells = [_format(row[column.name], row[f"{column.name}_lo"], row[f"{column.name}_hi"]) for row in rows]
        lines.append(f"| {column.label} | " + " | ".join(cells) + " |")
    seeds = ", ".join(f"{row['model']}: seed {row['seed']}, n {row['n']}" for row in rows)
    lines += ["", f"Mean [95% bootstrap interval over images]. {seeds}."]
    return "\n".join(lines) + "\n"


def write_report(results, out_dir, stem="generator_evaluation"):
    """Write `<stem>.csv`, `<stem>.json` and `<stem>.md` into `out_dir`; returns {"csv", "json", "markdown"} paths."""
    if not results:
        raise ValueError("write_report needs at least one evaluated model")
    os.makedirs(out_dir, exist_ok=True)
    rows, columns = table_rows(results)
    paths = {
        "csv": os.path.join(out_dir, f"{stem}.csv"),
        "json": os.path.join(out_dir, f"{stem}.json"),
        "markdown": os.path.join(out_dir, f"{stem}.md"),
    }
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "judgement"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["json"], "w") as handle:
        json.dump(
            {
                "table1": list(TABLE1),
                "columns": [{"name": c.name, "label": c.label, "path": list(c.path)} for c in columns],
                "rows": rows,
                "results": results,
            },
            handle,
            indent=2,
        )
    with open(paths["markdown"], "w") as handle:
        handle.write(markdown(rows, columns))
    return paths
