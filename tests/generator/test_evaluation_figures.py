"""The evaluation figures are written as PNG files, with red for brighter and blue for darker."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from generator.evaluation import evaluate, figures
from generator.training.active_learning import forgetting_counts, forgetting_histogram
from generator.training.proposed import training_set_histograms
from tests.generator.test_evaluation_evaluate import CodingModel, Expert, IdentityModel, make_split


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 50


def test_effect_colours_are_red_for_brighter_and_blue_for_darker():
    colours = matplotlib.colormaps[figures.EFFECT_COLOURS]
    red, _, blue, _ = colours(1.0)
    assert red > 0.9 and blue < 0.1
    red, _, blue, _ = colours(0.0)
    assert blue > 0.9 and red < 0.1


def test_counterfactual_examples_make_one_png_per_example_with_a_row_per_model(tmp_path):
    split, _ = make_split(n=6)
    examples = {
        "Baseline": evaluate.disease_examples(IdentityModel(), split, [0, 3], samples=2),
        "Ours": evaluate.disease_examples(CodingModel(), split, [0, 3], samples=2, expert=Expert()),
    }
    assert set(examples["Ours"]["counterfactuals"]) == {"healthy", "effusion", "pneumonia"}
    assert np.allclose(examples["Baseline"]["effects"]["effusion"], 0.0)
    paths = figures.plot_counterfactual_examples(examples, tmp_path / "figs")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["counterfactuals_p0.png", "counterfactuals_p3.png"]
    for path in paths:
        assert_png(path)
    single = evaluate.disease_examples(CodingModel(), split, [1])
    assert figures.plot_counterfactual_examples(single, tmp_path / "single", prefix="ours")[0].endswith("ours_p1.png")


def al_record(n_real=50, fraction=0.1, rounds=3, epochs=6, seed=0):
    """An active-learning record shaped like run_active_learning's, with histograms from proxy correctness
    histories in which a few examples are never classified correctly."""
    rng = np.random.default_rng(seed)

    def histogram(n):
        history = rng.random((epochs, n)) < 0.7
        history[:, : max(1, n // 10)] = False  # never learned
        return forgetting_histogram(forgetting_counts(history))

    n_add = round(fraction * n_real)
    records = [
        {
            "round": k,
            "n_added": n_add,
            "training_size": n_real + k * n_add,
            "synthetic_fraction": k * n_add / n_real,
            "histogram_training": histogram(n_real + (k - 1) * n_add),
            "histogram_candidates": histogram(4 * n_add),
        }
        for k in range(1, rounds + 1)
    ]
    return {"rounds": records, "histogram_final": histogram(n_real + rounds * n_add), "checkpoints": {}}


def test_forgetting_histograms_of_an_al_record_show_never_learned_examples_in_their_own_bin(tmp_path, monkeypatch):
    record = al_record()
    curves = training_set_histograms(record)
    assert [share for share, _ in curves] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [h["n"] for _, h in curves] == [50, 55, 60, 65]
    assert all(h["never_learned_percent"] > 0 for _, h in curves)
    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or save(figure, path))

    labels = ["real data", "+10%", "+20%", "+30%"]
    path = figures.plot_forgetting_histograms([h for _, h in curves], tmp_path / "fig4a.png", labels=labels)
    assert_png(path)
    (axis,) = drawn[0].axes
    assert axis.get_xticklabels()[-1].get_text() == "never\nlearned"
    never_x = axis.get_xticks()[-1]
    points = [line.get_ydata()[0] for line in axis.get_lines() if list(line.get_xdata()) == [never_x]]
    assert points == pytest.approx([h["never_learned_percent"] for _, h in curves])
    assert [t.get_text() for t in axis.get_legend().get_texts()] == [
        f"{label} (n={h['n']})" for label, (_, h) in zip(labels, curves)
    ]


def test_forgetting_histograms_and_effectiveness_curve_are_written(tmp_path):
    rng = np.random.default_rng(0)
    rounds = [forgetting_histogram(rng.poisson(lam, size=200)) for lam in (0.5, 1.0, 1.5, 2.0)]
    path = figures.plot_forgetting_histograms(rounds, tmp_path / "fig4a.png", labels=["raw", "+10%", "+20%", "+30%"])
    assert_png(path)
    assert_png(figures.plot_forgetting_histograms([forgetting_histogram([])], tmp_path / "empty.png"))
    summaries = [{"mean": 0.85, "ci95": [0.8, 0.9]}, {"mean": 0.9, "ci95": [0.86, 0.93]}, 0.92]
    assert_png(figures.plot_effectiveness_curve([0.0, 0.1, 0.2], summaries, tmp_path / "fig4b.png"))


def test_figure_inputs_that_do_not_match_are_refused(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        figures.plot_forgetting_histograms([forgetting_histogram(np.zeros(3))], tmp_path / "a.png", labels=["a", "b"])
    with pytest.raises(TypeError, match="not raw counts"):
        figures.plot_forgetting_histograms([np.zeros(3)], tmp_path / "a.png")
    with pytest.raises(ValueError, match="one AUROC per"):
        figures.plot_effectiveness_curve([0.1, 0.2], [0.9], tmp_path / "b.png")
