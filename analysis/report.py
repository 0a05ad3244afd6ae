"""Writing the analysis out: analysis.json, CSV tables, PNG figures and one self-contained report.html.

The HTML report is rendered from the Jinja2 template analysis/templates/report.html.jinja (no Django needed, so it
works from a notebook) and embeds its figures as base64 PNGs, so the single file can be mailed or archived and still
opens with its plots. NaN (a statistic that could not be computed) becomes null in JSON and an empty cell in CSV; the
reason is in the neighbouring `note`.
"""

import base64
import io
import json
import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from analysis.stats import CONDITIONS, DECISIONS, MODELS, SOURCES

FORMATS = ("json", "csv", "html")
COLOURS = {"real": "#4c72b0", "baseline": "#dd8452", "proposed": "#55a868"}


def to_jsonable(value):
    """Plain JSON types: NaN and infinities become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def build_document(results, n_participants, exclusions, settings):
    """The analysis.json document: counts and exclusions first, then the statistics."""
    return to_jsonable(
        {
            "n_participants": n_participants,
            "n_excluded": len(exclusions),
            "exclusions": exclusions,
            "settings": settings,
            **results,
        }
    )


def write_report(document, tables, out_dir, formats=FORMATS):
    """Write the requested formats into `out_dir`; returns the written paths."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "json" in formats:
        path = out / "analysis.json"
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        written.append(path)
    if "csv" in formats:
        written.extend(write_tables(document, tables, out))
    if "html" in formats:
        figures = make_figures(document, tables)
        figure_dir = out / "figures"
        figure_dir.mkdir(exist_ok=True)
        for name, png in figures.items():
            (figure_dir / f"{name}.png").write_bytes(png)
            written.append(figure_dir / f"{name}.png")
        path = out / "report.html"
        path.write_text(render_html(document, figures))
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------------
# CSV


def summary_tables(document):
    """Flat tables of the headline numbers: accuracy, tests, correction rates, exclusions."""
    block1, block2 = document["block1"], document["block2"]
    accuracy = [
        _proportion_row({"source": s, "condition": "all"}, block1["accuracy_by_source"][s]) for s in SOURCES
    ] + [
        _proportion_row({"source": s, "condition": c}, block1["accuracy_by_source_condition"][s][c])
        for s in SOURCES
        for c in CONDITIONS
    ]
    block2_rows = [_proportion_row({"measure": "first_accuracy", "cf_model": "all"}, block2["first_accuracy"])]
    for model in MODELS:
        block2_rows.append(
            _proportion_row(
                {"measure": "first_accuracy", "cf_model": model}, block2["first_accuracy"]["by_model"][model]
            )
        )
        block2_rows.append(
            _proportion_row(
                {"measure": "final_accuracy", "cf_model": model}, block2["final_accuracy"]["by_model"][model]
            )
        )
        block2_rows.append(
            _proportion_row({"measure": "correction_rate", "cf_model": model}, block2["correction_rate"][model])
        )
        excluded = block2["correction_rate_excluding_top_case"][model]
        row = _proportion_row({"measure": "correction_rate_excluding_top_case", "cf_model": model}, excluded)
        block2_rows.append({**row, "excluded_case": excluded.get("excluded_case")})
    switches = [
        {
            "cf_model": model,
            **{k: v for k, v in table.items() if k != "mcnemar"},
            **_prefixed(table["mcnemar"], "mcnemar_"),
        }
        for model, table in block2["switch_table"].items()
    ]
    return {
        "accuracy_block1": pd.DataFrame(accuracy),
        "block2_summary": pd.DataFrame(block2_rows),
        "switch_table": pd.DataFrame(switches),
        "tests": pd.DataFrame(list_tests(document)),
        "exclusions": pd.DataFrame(document["exclusions"], columns=["participant", "status", "reason"]),
    }


def _proportion_row(keys, result):
    low, high = result.get("ci95") or [None, None]
    return {
        **keys,
        "estimate": result.get("estimate"),
        "k": result.get("k"),
        "n": result.get("n"),
        "ci_low": low,
        "ci_high": high,
    }


def _prefixed(result, prefix):
    return {prefix + key: value for key, value in result.items()}


def list_tests(document):
    """Every hypothesis test in the document as one row: name, statistic, df, p, Holm-adjusted p, effect, CI."""
    rows = []
    block1, block2 = document["block1"], document["block2"]
    for family in ("realness_ttest", "reasons_ttest"):
        for name, test in block1[family].items():
            rows.append(_test_row(f"block1.{family}.{name}", "t", test, "mean_diff"))
    for family in ("realness_lmm", "reasons_lmm"):
        for name, test in block1.get(family, {}).items():
            rows.append(_test_row(f"block1.{family}.{name}", "z", test, "mean_diff"))
    for model, test in block1["realness_auroc"].items():
        rows.append(_test_row(f"block1.realness_auroc.{model} (vs 0.5)", "t", test, "mean"))
    for model in MODELS:
        rows.append(_test_row(f"block2.accuracy_change.{model} (vs 0)", "t", block2["accuracy_change"][model], "mean"))
        rows.append(
            _test_row(
                f"block2.switch_table.{model}.mcnemar", "statistic", block2["switch_table"][model]["mcnemar"], None
            )
        )
    rows.append(
        _test_row(
            "block2.accuracy_change.proposed_vs_baseline",
            "t",
            block2["accuracy_change"]["proposed_vs_baseline"],
            "mean_diff",
        )
    )
    for kind in ("confidence_accuracy_r", "confidence_accuracy_rmcorr"):
        for decision in DECISIONS:
            for model in MODELS:
                rows.append(_test_row(f"block2.{kind}.{decision}.{model}", "r", block2[kind][decision][model], "r"))
    for decision in DECISIONS:
        for model in MODELS:
            for condition, test in block2["confidence_accuracy_r_by_condition"][decision][model].items():
                name = f"block2.confidence_accuracy_r_by_condition.{decision}.{model}.{condition}"
                rows.append(_test_row(name, "r", test, "r"))
    return rows


def _test_row(name, statistic, test, effect):
    low, high = test.get("ci95") or [None, None]
    return {
        "test": name,
        "statistic": test.get(statistic),
        "df": test.get("df"),
        "p": test.get("p"),
        "p_holm": test.get("p_holm"),
        "effect": test.get(effect) if effect else None,
        "ci_low": low,
        "ci_high": high,
        "note": test.get("note", ""),
    }


def write_tables(document, tables, out):
    written = []
    all_tables = {**summary_tables(document), **tables}
    for name, table in all_tables.items():
        path = out / f"{name}.csv"
        frame = table if isinstance(table.index, pd.RangeIndex) else table.reset_index()
        frame.to_csv(path, index=False, float_format="%.6g")
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------------
# Figures


def make_figures(document, tables):
    """PNG bytes of each figure, by name."""
    return {
        "realness_by_source": _png(_realness_figure(tables["realness_per_participant"])),
        "accuracy_by_source_condition": _png(_accuracy_figure(document["block1"])),
        "accuracy_change_by_case": _png(_change_figure(tables["accuracy_change_per_case"])),
        "confidence_accuracy": _png(
            _calibration_figure(tables["confidence_accuracy_per_participant"], document["block2"])
        ),
    }


def _subplots(*grid, figsize, **options):
    """A figure on its own Agg canvas, never through pyplot: no global backend, no figure registry to close, and
    pyplot's import is saved from the command's start-up."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(*grid, **options)


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _realness_figure(per_participant):
    figure, axis = _subplots(figsize=(5.5, 4))
    data = [per_participant[s].dropna().to_numpy() for s in SOURCES]
    # One collection for every participant's line: a Line2D each costs a second per thousand participants.
    # Matplotlib breaks a line at a missing value, as it does for a plotted one.
    means = per_participant[list(SOURCES)].to_numpy(dtype=float)
    positions = np.broadcast_to(np.arange(3.0), means.shape)
    lines = LineCollection(np.stack([positions, means], axis=-1), colors="#bbbbbb", linewidths=0.7, zorder=1)
    axis.add_collection(lines)
    for i, (source, values) in enumerate(zip(SOURCES, data)):
        axis.scatter(np.full(len(values), i), values, color=COLOURS[source], s=14, zorder=2)
        if len(values):
            axis.errorbar(
                i + 0.18, values.mean(), yerr=_half_width(values), fmt="D", color="black", capsize=4, zorder=3
            )
    axis.set_xticks(range(3), [s.capitalize() for s in SOURCES])
    axis.set_ylim(0, 101)
    axis.axhline(50, color="#888888", linestyle=":", linewidth=1)
    axis.set_ylabel("Mean realness per participant (1-100)")
    axis.set_title("Block 1: realness by image source")
    return figure


def _half_width(values):
    if len(values) < 2:
        return 0.0
    from scipy.stats import t

    return t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))


def _accuracy_figure(block1):
    figure, axis = _subplots(figsize=(6.5, 4))
    width = 0.26
    for i, source in enumerate(SOURCES):
        cells = [block1["accuracy_by_source_condition"][source][c] for c in CONDITIONS]
        estimates = np.array([_num(cell["estimate"]) for cell in cells])
        low = np.array([_num(cell["ci95"][0]) for cell in cells])
        high = np.array([_num(cell["ci95"][1]) for cell in cells])
        positions = np.arange(3) + (i - 1) * width
        axis.bar(positions, estimates, width, color=COLOURS[source], label=source.capitalize())
        axis.errorbar(
            positions, estimates, yerr=[estimates - low, high - estimates], fmt="none", color="black", capsize=3
        )
    axis.axhline(1 / 3, color="#888888", linestyle=":", linewidth=1, label="Chance")
    axis.set_xticks(range(3), [c.capitalize() for c in CONDITIONS])
    axis.set_ylim(0, 1)
    axis.set_ylabel("Accuracy (Wilson 95% CI)")
    axis.set_title("Block 1: accuracy by source and condition")
    axis.legend(frameon=False, fontsize=8)
    return figure


def _num(value):
    return math.nan if value is None else float(value)


def _change_figure(per_case):
    figure, axis = _subplots(figsize=(max(5.5, 0.5 * len(per_case) + 2), 4))
    positions = np.arange(len(per_case))
    width = 0.38
    for i, model in enumerate(MODELS):
        axis.bar(
            positions + (i - 0.5) * width,
            per_case[model].to_numpy(),
            width,
            color=COLOURS[model],
            label=model.capitalize(),
        )
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(positions, [str(case) for case in per_case.index], rotation=45, ha="right")
    axis.set_xlabel("Case (patient)")
    axis.set_ylabel("Mean accuracy change (final - first)")
    axis.set_title("Block 2: accuracy change by case and model")
    axis.legend(frameon=False, fontsize=8)
    return figure


def _calibration_figure(long, block2):
    figure, axes = _subplots(1, 2, figsize=(9, 4), sharey=True)
    for axis, decision in zip(axes, DECISIONS):
        for model in MODELS:
            chosen = long[(long["decision"] == decision) & (long["cf_model"] == model)]
            result = block2["confidence_accuracy_r"][decision][model]
            r = "n/a" if result.get("r") is None else f"{result['r']:.2f}"
            axis.scatter(
                chosen["confidence"],
                chosen["accuracy"],
                color=COLOURS[model],
                s=18,
                alpha=0.8,
                label=f"{model.capitalize()} (r = {r})",
            )
            if len(chosen) >= 2 and chosen["confidence"].nunique() > 1:
                slope, intercept = np.polyfit(chosen["confidence"], chosen["accuracy"], 1)
                xs = np.linspace(chosen["confidence"].min(), chosen["confidence"].max(), 10)
                axis.plot(xs, intercept + slope * xs, color=COLOURS[model])
        axis.set_title(f"{decision.capitalize()} decision")
        axis.set_xlabel("Mean confidence per participant (1-6)")
        axis.set_xlim(0.8, 6.2)
        axis.legend(frameon=False, fontsize=8)
    axes[0].set_ylabel("Accuracy per participant")
    axes[0].set_ylim(-0.05, 1.05)
    figure.suptitle("Block 2: confidence and accuracy across participants")
    return figure


# ---------------------------------------------------------------------------------------------------------------
# HTML


def _fmt(value, digits=3):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _ci(result):
    low, high = result.get("ci95") or [None, None]
    return f"[{_fmt(low)}, {_fmt(high)}]"


# The page layout lives in analysis/templates/report.html.jinja; Jinja2 escapes every value it prints, so study
# names, notes and exclusion reasons cannot inject markup. Undefined names fail loudly instead of printing nothing.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("analysis", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters.update(fmt=_fmt, ci=_ci)


def render_html(document, figures):
    """The self-contained report page: `document` as built by `build_document`, `figures` the PNG bytes by name."""
    warning = _readers_warning(document)
    head, _, text = warning.partition(": ")
    return _TEMPLATES.get_template("report.html.jinja").render(
        document=document,
        block1=document["block1"],
        block2=document["block2"],
        multiplicity=document["multiplicity"],
        primary=_lookup(document, document["multiplicity"]["primary_endpoint"]),
        readers=document.get("readers") or {},
        warning={"head": head.upper(), "text": text} if warning else None,
        title=_report_title(document),
        images={name: base64.b64encode(png).decode("ascii") for name, png in figures.items()},
        sources=SOURCES,
        models=MODELS,
        decisions=DECISIONS,
    )


def _lookup(document, path):
    node = document
    for key in path.split("."):
        node = node[key]
    return node


def analyse_answers(
    answers,
    participants=None,
    include_incomplete=False,
    settings=None,
    fit_models=True,
    progress=None,
    readers="real",
):
    """From the tidy answers (and optionally the participants table) to the analysis document and its tables:
    keep the real participants (or, with `readers`, the simulated ones or both), select who counts, run every
    statistic, attach counts, exclusions and settings. Input with participants of the other kind only is refused."""
    from analysis.frames import FrameError, keep_readers, reader_counts, select_participants
    from analysis.stats import analyse

    counts = reader_counts(answers, participants)
    answers, participants = keep_readers(answers, participants, readers)
    if readers != "all" and counts[readers] == 0 and sum(counts.values()):
        other = "simulated" if readers == "real" else "real"
        raise FrameError(
            f"no {readers} participants to analyse: the input holds {counts[other]} {other} participant(s) only "
            f"(analyse them with --readers {other})"
        )
    kept, exclusions = select_participants(answers, participants, include_incomplete)
    results, tables = analyse(kept, fit_models=fit_models, progress=progress)
    settings = {"include_incomplete": include_incomplete, **(settings or {})}
    document = build_document(results, int(kept["participant"].nunique()), exclusions, settings)
    document["readers"] = readers_summary(readers, counts)
    return document, tables


READERS_LABELS = {"real": "real data", "simulated": "simulated data", "all": "real and simulated data mixed"}


def readers_summary(readers, counts):
    """Whose answers the document analyses, how many participants of each kind the input held, and who was left
    out for being of the other kind."""
    left_out = {"real": counts["simulated"], "simulated": counts["real"], "all": 0}[readers]
    other = "simulated" if readers == "real" else "real"
    return {
        "analysed": readers,
        "label": READERS_LABELS[readers],
        "n_real": counts["real"],
        "n_simulated": counts["simulated"],
        "left_out": left_out,
        "note": f"{left_out} {other} participant(s) left out (--readers {other} analyses them)" if left_out else "",
    }


def _readers_warning(document):
    """The warning every report built from simulated answers carries at its top; empty for real data."""
    readers = document.get("readers") or {}
    if readers.get("analysed") == "simulated":
        return (
            "Simulated data: every participant analysed here is a simulated reader (simulate_participants). "
            "These results are a dry run and say nothing about real readers."
        )
    if readers.get("analysed") == "all" and readers.get("n_simulated"):
        return (
            f"Simulated data mixed in: this analysis pools {readers['n_real']} real and {readers['n_simulated']} "
            "simulated participants, as asked (--readers all). It says nothing about real readers alone."
        )
    return ""


def _report_title(document):
    warning = _readers_warning(document)
    label = (document.get("readers") or {}).get("label", "")
    return f"Reader study analysis ({label})" if warning else "Reader study analysis"


def _readers_lines(document):
    warning = _readers_warning(document)
    if warning:
        head, text = warning.split(": ", 1)
        return [f"*** {head.upper()} *** {text}"]
    note = (document.get("readers") or {}).get("note")
    return [f"Real participants only; {note}."] if note else []


def summary_lines(document):
    """A few lines for the terminal: counts, the primary endpoint and the Block-2 headline numbers."""
    block1, block2 = document["block1"], document["block2"]
    primary = _lookup(document, document["multiplicity"]["primary_endpoint"])
    statistic = (
        f"z = {_fmt(primary.get('z'))}"
        if "z" in primary
        else f"t({_fmt(primary.get('df'), 0)}) = {_fmt(primary.get('t'))}"
    )
    accuracy = ", ".join(f"{s} {_fmt(block1['accuracy_by_source'][s]['estimate'])}" for s in SOURCES)
    correction = ", ".join(f"{m} {_fmt(block2['correction_rate'][m]['estimate'])}" for m in MODELS)
    lines = [
        *_readers_lines(document),
        f"Participants analysed: {document['n_participants']}, excluded: {document['n_excluded']}",
        *[f"  excluded {e['participant']}: {e['reason']}" for e in document["exclusions"]],
        f"Block-1 design: {document.get('block1_design', 'paired')}",
        f"Block 1 accuracy: {accuracy}",
        "Primary endpoint (realness, proposed - baseline): "
        f"{_fmt(primary.get('mean_diff'))} {_ci(primary)}, {statistic}, "
        f"p = {_fmt(primary.get('p'))}, Holm p = {_fmt(primary.get('p_holm'))}"
        + (f" ({primary['note']})" if primary.get("note") else ""),
        f"Block 2 first-decision accuracy: {_fmt(block2['first_accuracy']['estimate'])}; correction rate: {correction}",
    ]
    for name, model in document["models"].items():
        lines.append(
            f"{name}: {model.get('method') or 'not fitted'}" + (f" ({model['note']})" if model.get("note") else "")
        )
    return lines
