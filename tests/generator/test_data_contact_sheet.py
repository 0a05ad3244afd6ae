"""The phantom contact sheet command writes one viewable PNG per class, with true counterfactuals beside samples."""

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from generator.data.contact_sheet import GAP, HEADER, MIN_TILE


def test_command_writes_one_png_per_class(tmp_path):
    call_command("phantom_contact_sheet", out=str(tmp_path), n=2, resolution=32, seed=1)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["phantom-effusion.png", "phantom-healthy.png", "phantom-pneumonia.png"]
    sheet = np.asarray(Image.open(tmp_path / "phantom-effusion.png"))
    columns, rows = 5, 2  # factual, do(healthy), do(effusion), do(pneumonia), masks
    assert sheet.shape == (2 * HEADER + rows * (MIN_TILE + GAP) + GAP, columns * (MIN_TILE + GAP) + GAP, 3)

    def tile(row, column):
        top, left = 2 * HEADER + GAP + row * (MIN_TILE + GAP), GAP + column * (MIN_TILE + GAP)
        return sheet[top : top + MIN_TILE, left : left + MIN_TILE]

    # For an effusion sample, do(effusion) is the sample itself and do(healthy) differs from it.
    assert np.array_equal(tile(0, 0), tile(0, 2))
    assert not np.array_equal(tile(0, 0), tile(0, 1))
    overlay = tile(0, 4).astype(int)
    assert ((overlay[..., 0] - overlay[..., 2]) > 40).any()  # the effusion mask is drawn in red


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(CommandError, match="resolution"):
        call_command("phantom_contact_sheet", out=str(tmp_path), resolution=4)
