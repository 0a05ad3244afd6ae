"""An image file sent for counterfactuals is preprocessed exactly as the same file is for training: one reader, one
crop, one resampling filter, one intensity scaling (the training loaders')."""

from pathlib import Path

import pytest
import torch

from generator.causal.production import images_from_files
from generator.data import CHESTXRAY8_GRAPH, load_nih_splits

NIH_SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "nih-cxr-sample"


class FixedParents:
    """Stands in for a run's parent predictors: the pixels are under test here, not the predicted parents."""

    graph = CHESTXRAY8_GRAPH

    def predict(self, x):
        return {
            node.name: torch.zeros(len(x)) if node.kind == "continuous" else torch.zeros(len(x), len(node.categories))
            for node in self.graph.nodes
        }


@pytest.mark.parametrize("resolution", [32, 48])
def test_a_file_sent_for_counterfactuals_equals_the_same_file_in_the_training_split(resolution):
    splits = load_nih_splits(NIH_SAMPLE, resolution)
    test = splits["test"]
    rows = [0, len(test.ids) - 1]
    paths = [NIH_SAMPLE / "images" / test.ids[row] for row in rows]
    sent = images_from_files(paths, resolution, FixedParents())
    assert sent.x.dtype == test.x.dtype and sent.x.shape == (2, 1, resolution, resolution)
    assert torch.equal(sent.x, test.x[rows])
