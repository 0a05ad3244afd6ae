"""A malformed training set fails with an error naming the problem, and no checkpoint is marked complete."""

from types import SimpleNamespace

import pytest
import torch

from generator.data.graph import MIMIC_GRAPH
from generator.training.checkpoint import read_manifest
from generator.training.pipeline import RunConfig, train
from generator.training.trainer import DatasetError
from tests.generator.helpers import tiny_preset

STEPS = {"parents": 2, "predictors": 1, "hvae": 1, "counterfactual": 1}


def split(n=8, resolution=32):
    pa = {
        "age": torch.full((n,), 50.0),
        "sex": torch.zeros(n),
        "race": torch.zeros(n, dtype=torch.long),
        "wcc": torch.full((n,), 8.0),
        "disease": torch.zeros(n, dtype=torch.long),
    }
    return SimpleNamespace(graph=MIMIC_GRAPH, x=torch.zeros(n, 1, resolution, resolution), pa=pa, ids=list(range(n)))


def nan_pixels():
    s = split()
    s.x[5, 0, 3, 3] = float("nan")
    return s, "image row 5 has NaN"


def wrong_shape():
    s = split()
    s.x = torch.zeros(8, 1, 16, 16)
    return s, r"images must have shape \[N, 1, 32, 32\]"


def missing_parent():
    s = split()
    del s.pa["wcc"]
    return s, "parent 'wcc' is missing"


def bad_category():
    s = split()
    s.pa["disease"][2] = 7
    return s, "parent 'disease' has an invalid value at row 2"


@pytest.mark.parametrize("make", [nan_pixels, wrong_shape, missing_parent, bad_category])
def test_malformed_training_set_is_rejected_before_anything_is_written(make, tmp_path):
    broken, message = make()
    with pytest.raises(DatasetError, match=message):
        train(RunConfig(preset="test-32", steps=STEPS), tiny_preset(), {"train": broken, "valid": split()}, tmp_path)
    assert read_manifest(tmp_path)["stages"] == {}
    assert not list((tmp_path).rglob("*.pt"))


def test_error_names_the_split(tmp_path):
    broken, _ = nan_pixels()
    with pytest.raises(DatasetError, match="valid split"):
        train(RunConfig(preset="test-32", steps=STEPS), tiny_preset(), {"train": split(), "valid": broken}, tmp_path)
