"""The evaluation figures are written as PNG files, with red for brighter and blue for darker."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from generator.evaluation import evaluate, figures
from tests.test_evaluation_evaluate import CodingModel, Expert, IdentityModel, make_split


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


def test_forgetting_histograms_and_effectiveness_curve_are_written(tmp_path):
    rng = np.random.default_rng(0)
    rounds = [rng.poisson(lam, size=200) for lam in (0.5, 1.0, 1.5, 2.0)]
    path = figures.plot_forgetting_histograms(rounds, tmp_path / "fig4a.png", labels=["raw", "+10%", "+20%", "+30%"])
    assert_png(path)
    summaries = [{"mean": 0.85, "ci95": [0.8, 0.9]}, {"mean": 0.9, "ci95": [0.86, 0.93]}, 0.92]
    assert_png(figures.plot_effectiveness_curve([0.0, 0.1, 0.2], summaries, tmp_path / "fig4b.png"))


def test_figure_inputs_that_do_not_match_are_refused(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        figures.plot_forgetting_histograms([np.zeros(3)], tmp_path / "a.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="one AUROC per"):
        figures.plot_effectiveness_curve([0.1, 0.2], [0.9], tmp_path / "b.png")
