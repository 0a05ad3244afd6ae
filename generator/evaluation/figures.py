"""Figures of the evaluation, as PNG files (the paper's Figures 2/3/6/7 and 4a/4b).

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so nothing here
touches a global backend or needs a display.
"""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

EFFECT_COLOURS = "bwr"  # diverging: red = the counterfactual is brighter, blue = darker, white = unchanged
UNCERTAINTY_COLOURS = "magma"


def _new_figure(width, height, layout="constrained"):
    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png")
    return str(path)


def _blank(axis):
    axis.set_xticks([])
    axis.set_yticks([])


def plot_counterfactual_examples(examples_by_model, out_dir, prefix="counterfactuals"):
    """One PNG per example: rows are models, columns the observation and, under each do(disease := k), the
    counterfactual, its direct effect and its per-pixel uncertainty.

    `examples_by_model`: {model name: evaluate.disease_examples(...)} for the SAME example images (a single
    disease_examples result is accepted too). The effect colours are shared across the figure and centred at 0
    (red brighter, blue darker); the uncertainty is the std over posterior samples. With an expert, each title
    shows its probability of the class in question. Returns the paths written.
    """
    if "x" in examples_by_model:
        examples_by_model = {"": examples_by_model}
    models = list(examples_by_model)
    first = examples_by_model[models[0]]
    classes = first["classes"]
    paths = []
    for i, example_id in enumerate(first["ids"]):
        columns = 1 + 3 * len(classes)
        # A fixed grid: a layout engine would measure every one of the many small panels and is slow.
        figure = _new_figure(1.5 * columns + 1.2, 1.8 * len(models), layout=None)
        axes = np.asarray(figure.subplots(len(models), columns, squeeze=False))
        figure.subplots_adjust(left=0.03, right=0.86, bottom=0.02, top=0.86, wspace=0.06, hspace=0.35)
        effect_limit = max(max(np.abs(examples_by_model[m]["effects"][c][i]).max() for c in classes) for m in models)
        effect_norm = TwoSlopeNorm(vcenter=0.0, vmin=-max(effect_limit, 1e-3), vmax=max(effect_limit, 1e-3))
        uncertainty_limit = max(max(examples_by_model[m]["uncertainty"][c][i].max() for c in classes) for m in models)
        for row, model in enumerate(models):
            examples = examples_by_model[model]
            probabilities = examples.get("probabilities")
            axes[row, 0].imshow(examples["x"][i], cmap="gray", vmin=-1, vmax=1)
            axes[row, 0].set_title(_title("observation", probabilities, "observation", i, None), fontsize=7)
            axes[row, 0].set_ylabel(model, fontsize=8)
            for k, name in enumerate(classes):
                column = 1 + 3 * k
                axes[row, column].imshow(examples["counterfactuals"][name][i], cmap="gray", vmin=-1, vmax=1)
                axes[row, column].set_title(_title(f"do({name})", probabilities, name, i, k), fontsize=7)
                effect_image = axes[row, column + 1].imshow(
                    examples["effects"][name][i], cmap=EFFECT_COLOURS, norm=effect_norm
                )
                axes[row, column + 1].set_title("direct effect", fontsize=7)
                uncertainty_image = axes[row, column + 2].imshow(
                    examples["uncertainty"][name][i],
                    cmap=UNCERTAINTY_COLOURS,
                    vmin=0,
                    vmax=max(uncertainty_limit, 1e-6),
                )
                axes[row, column + 2].set_title("uncertainty", fontsize=7)
        for axis in axes.flat:
            _blank(axis)
        figure.colorbar(effect_image, cax=figure.add_axes((0.875, 0.08, 0.008, 0.75)), label="direct effect (x_cf - x)")
        figure.colorbar(uncertainty_image, cax=figure.add_axes((0.94, 0.08, 0.008, 0.75)), label="uncertainty (std)")
        paths.append(_save(figure, os.path.join(out_dir, f"{prefix}_{_safe(example_id)}.png")))
    return paths


def _title(label, probabilities, key, i, k):
    """`label`, plus the expert's probability of class k (or, for the observation, of each finding)."""
    if probabilities is None:
        return label
    values = probabilities[key][i]
    if k is None:
        return f"{label}\nP(E) {values[1]:.2f} P(P) {values[2]:.2f}"
    return f"{label}\nP = {values[k]:.2f}"


def _safe(text):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))


def plot_forgetting_histograms(histograms, path, labels=None):
    """Fig. 4a: distribution of forgetting counts (x) as a percentage of the data (y), one curve per AL round.

    `histograms`: one `active_learning.forgetting_histogram` record per curve, e.g. [raw data, +10%, +20%, +30%];
    `labels` names them. Examples the proxy never learned have no count; they form a bin of their own, drawn
    apart at the right end of the axis.
    """
    if not histograms:
        raise ValueError("plot_forgetting_histograms needs the histogram of at least one round")
    labels = labels or [f"round {i}" for i in range(len(histograms))]
    if len(labels) != len(histograms):
        raise ValueError(f"{len(labels)} labels for {len(histograms)} rounds")
    if not all(isinstance(h, dict) and "percent" in h for h in histograms):
        raise TypeError("plot_forgetting_histograms takes forgetting_histogram() records, not raw counts")
    top = max(max(len(h["percent"]) for h in histograms), 1) - 1
    never_x = top + 2  # one empty slot between the last count and the never-learned bin
    figure = _new_figure(5, 3.5)
    axis = figure.add_subplot()
    for histogram, label in zip(histograms, labels):
        percent = np.zeros(top + 1)
        percent[: len(histogram["percent"])] = histogram["percent"]
        (line,) = axis.plot(
            np.arange(top + 1), percent, drawstyle="steps-mid", marker=".", label=f"{label} (n={histogram['n']})"
        )
        axis.plot([never_x], [histogram["never_learned_percent"]], marker="o", color=line.get_color())
    axis.axvline(top + 1, color="grey", linestyle=":", linewidth=0.8)
    ticks = list(range(0, top + 1, max(1, (top + 1) // 8)))
    axis.set_xticks(ticks + [never_x], [str(t) for t in ticks] + ["never\nlearned"])
    axis.set_xlabel("forgetting events")
    axis.set_ylabel("share of the data (%)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_effectiveness_curve(synthetic_fractions, aurocs, path, label="disease AUROC"):
    """Fig. 4b: effectiveness (AUROC) against the share of synthetic data added by active learning.

    `aurocs`: floats or report summaries {"mean", "ci95"}; intervals are drawn as error bars when present.
    Fractions are given as 0.1 or as 10 (percent); both plot in percent.
    """
    if len(synthetic_fractions) != len(aurocs) or not aurocs:
        raise ValueError("need one AUROC per synthetic fraction, at least one")
    fractions = np.asarray(synthetic_fractions, dtype=float)
    percent = fractions * 100.0 if fractions.max() <= 1.0 else fractions
    means, lows, highs = [], [], []
    for value in aurocs:
        if isinstance(value, dict):
            mean, (low, high) = value["mean"], value.get("ci95", (None, None))
        else:
            mean, low, high = value, None, None
        means.append(mean)
        lows.append(mean if low is None else low)
        highs.append(mean if high is None else high)
    means, lows, highs = (np.asarray(v, dtype=float) for v in (means, lows, highs))
    figure = _new_figure(4.5, 3.5)
    axis = figure.add_subplot()
    axis.errorbar(percent, means, yerr=[means - lows, highs - means], marker="o", capsize=3, label=label)
    axis.set_xlabel("synthetic data added (% of the training set)")
    axis.set_ylabel("ROC AUC")
    axis.legend(fontsize=8)
    return _save(figure, path)
