"""Stimulus sources are screened (adult, frontal view, no large blank border measured from the pixels) and come from
the held-out test split unless the researcher says otherwise; every refusal names its reason."""

from pathlib import Path

import numpy as np
import pytest
import torch

from generator.data import CHESTXRAY8_GRAPH, CXRDataset, load_splits
from generator.data.screening import MAX_BLANK_BORDER, ScreeningRules, blank_border, screen, screen_sample
from generator.services.stimuli import screen_stimulus_sources

NIH_SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "nih-cxr-sample"


def film(size=64, seed=0):
    """A made radiograph: smooth anatomy-like shading plus grain, no flat rows or columns anywhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    shading = 0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y)
    return np.clip(shading + rng.normal(0, 0.05, (size, size)), 0, 1).astype(np.float32)


def letterboxed(size=64, band=0.25, level=1.0):
    """The film shrunk into the middle of a uniform frame: `band` of the height above and below it."""
    image = np.full((size, size), level, dtype=np.float32)
    top = int(band * size)
    image[top : size - top] = film(size)[top : size - top]
    return image


def test_the_blank_border_is_measured_from_the_pixels():
    assert blank_border(film()) == 0.0
    assert blank_border(letterboxed(band=0.25)) == pytest.approx(0.5, abs=0.02)
    assert blank_border(letterboxed(band=0.05, level=0.0)) == pytest.approx(0.1, abs=0.02)
    assert blank_border(np.zeros((16, 16))) == 1.0
    # Grain in the frame keeps it blank as long as it stays within 3% of the grey range.
    noisy = letterboxed(band=0.25) - np.random.default_rng(1).uniform(0, 0.02, (64, 64)).astype(np.float32)
    assert blank_border(noisy) == pytest.approx(0.5, abs=0.02)


def test_a_letterboxed_film_is_rejected_with_its_reason():
    check = screen(letterboxed(band=0.25), age=40, view="PA")
    assert not check["passed"]
    assert check["reasons"] == [f"blank border covers 50% of the image (limit {MAX_BLANK_BORDER:.0%})"]
    assert screen(film(), age=40, view="PA") == {
        "passed": True,
        "reasons": [],
        "age": 40.0,
        "view": "PA",
        "blank_border": 0.0,
    }


def test_a_child_and_a_lateral_view_are_rejected():
    assert screen(film(), age=3, view="AP")["reasons"] == ["age 3 is under 18"]
    assert screen(film(), age=17.5, view="PA")["reasons"] == ["age 17.5 is under 18"]
    assert screen(film(), age=18, view="pa")["passed"]
    assert screen(film(), age=50, view="LL")["reasons"] == ["view LL is not one of PA/AP"]
    assert screen(film(), age=None, view=None)["reasons"] == ["age not recorded", "view position not recorded"]


def test_the_researcher_can_relax_a_criterion_or_turn_screening_off():
    child_in_a_frame = letterboxed(band=0.25)
    assert screen(child_in_a_frame, age=3, view="LATERAL", rules={"min_age": None})["reasons"] == [
        "view LATERAL is not one of PA/AP",
        "blank border covers 50% of the image (limit 20%)",
    ]
    relaxed = {"min_age": 2, "views": ["PA", "AP", "LATERAL"], "max_blank_border": 0.6}
    assert screen(child_in_a_frame, age=3, view="LATERAL", rules=relaxed)["passed"]
    off = screen(child_in_a_frame, age=3, view="LATERAL", rules=False)
    assert off["passed"] and off["blank_border"] == pytest.approx(0.5, abs=0.02)  # still measured and recorded
    assert ScreeningRules.from_value({}) == ScreeningRules()
    with pytest.raises(ValueError, match="unknown screening criteria"):
        ScreeningRules.from_value({"min_weight": 40})


def made_splits():
    """train / valid / test of made images: an adult film, a child, a lateral view and a letterboxed adult."""
    images = [film(32, seed) for seed in range(4)]
    images[3] = letterboxed(32, band=0.25)
    x = torch.from_numpy(np.stack(images))[:, None] * 2 - 1
    pa = {
        "age": torch.tensor([40.0, 7.0, 55.0, 60.0]),
        "sex": torch.tensor([0.0, 1.0, 0.0, 1.0]),
        "disease": torch.tensor([1, 2, 0, 1]),
    }
    ids = ["adult.png", "child.png", "lateral.png", "framed.png"]
    info = {"view_positions": {"adult.png": "PA", "child.png": "AP", "lateral.png": "LL", "framed.png": "PA"}}
    data = CXRDataset(x, pa, CHESTXRAY8_GRAPH, ids, 32, info=info)
    return {"train": data.subset([0]), "valid": data.subset([]), "test": data.subset([1, 2, 3])}


def test_each_source_gets_its_split_and_screening_result():
    splits = made_splits()
    checks = screen_stimulus_sources(splits, ["adult.png", "child.png", "lateral.png", "framed.png", "gone.png"])
    assert {image: check["split"] for image, check in checks.items()} == {
        "adult.png": "train",
        "child.png": "test",
        "lateral.png": "test",
        "framed.png": "test",
        "gone.png": "",
    }
    assert checks["adult.png"]["reasons"] == ["from the train split, which the models were trained on (not held out)"]
    assert checks["child.png"]["reasons"] == ["age 7 is under 18"]
    assert checks["lateral.png"]["reasons"] == ["view LL is not one of PA/AP"]
    assert checks["framed.png"]["reasons"] == ["blank border covers 50% of the image (limit 20%)"]
    assert checks["gone.png"]["reasons"] == ["not in the data set"]
    assert not any(check["passed"] for check in checks.values())

    # The researcher allows the training split and turns the screening off: all four images are accepted.
    relaxed = screen_stimulus_sources(splits, ["adult.png", "child.png", "lateral.png", "framed.png"],
                                      allowed=("test", "train"), screening=False)  # fmt: skip
    assert all(check["passed"] for check in relaxed.values())
    assert relaxed["adult.png"]["rules"] == {"min_age": None, "views": None, "max_blank_border": None}


def test_the_nih_loader_records_views_and_the_sample_s_letterboxed_child_film_is_rejected():
    splits = load_splits("nih", str(NIH_SAMPLE), 32, {"views": ["PA", "AP"], "seed": 0})
    views = splits["train"].info["view_positions"]
    assert len(views) == 213 and set(views.values()) == {"PA", "AP"}
    test = splits["test"]
    row = test.ids.index("00005618_000.png")
    check = screen_sample(test, row)
    assert check["view"] == "AP" and check["age"] == 3.0
    assert check["reasons"][0] == "age 3 is under 18"
    assert check["reasons"][1].startswith("blank border covers 3") and check["blank_border"] > 0.3
    # Adult films with a dark frame or burned-in markers pass.
    adults = [screen_sample(test, r) for r in range(len(test)) if float(test.pa["age"][r]) >= 18]
    assert all(check["passed"] for check in adults)


@pytest.mark.django_db
def test_the_demo_study_is_built_from_held_out_screened_images_only():
    from generator.registry import register_dataset
    from studyplatform.management.commands.demo import NIH_SAMPLE_OPTIONS, choose_cases

    dataset = register_dataset(kind="nih", root=str(NIH_SAMPLE), resolution=32, options=NIH_SAMPLE_OPTIONS)
    block1, block2 = choose_cases(dataset, 32)
    assert len(block1) == 12 and len(block2) == 12
    test = load_splits("nih", str(NIH_SAMPLE), 32, NIH_SAMPLE_OPTIONS)["test"]
    for source_id, condition, image in block1 + block2:
        row = test.ids.index(source_id)  # raises unless the image is in the test split
        assert screen_sample(test, row)["passed"]
        assert test.graph["disease"].categories[int(test.pa["disease"][row])] == condition
        assert image == (NIH_SAMPLE / "images" / source_id).read_bytes()
    assert len({source_id for source_id, _, _ in block1 + block2}) == 24
    assert sorted(condition for _, condition, _ in block1) == ["effusion"] * 4 + ["healthy"] * 4 + ["pneumonia"] * 4
    assert {condition for _, condition, _ in block2} == {"effusion", "pneumonia"}
    assert "00005618_000.png" in test.ids  # the letterboxed film of a 3-year-old is held out but never chosen
