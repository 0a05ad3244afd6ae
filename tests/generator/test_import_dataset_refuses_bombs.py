"""`import_dataset` refuses a decompression bomb among the radiographs before decoding it: a clear message that names
the file and the limit (the study platform's stimulus limit), no traceback, and nothing registered."""

import pytest
from django.core.management import CommandError, call_command

from generator.data import transforms
from generator.models import Dataset
from studyplatform import images
from tests.study.test_image_bombs_named_errors import bomb_png, text_bomb_png

pytestmark = pytest.mark.django_db

CSV_NAME = "Data_Entry_2017.csv"


def plant(root, data):
    """Replace the first image the label file lists with `data`; return its path."""
    name = (root / CSV_NAME).read_text().splitlines()[1].split(",")[0]
    path = root / "images" / name
    path.unlink()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("bomb", "message"),
    [
        # Far beyond PIL's own limit: PIL refuses it on opening.
        (lambda: bomb_png(30_000, 30_000), r"the image is larger than the 50-megapixel limit and was not decoded"),
        # Under PIL's limit but above the platform's: refused on the header, before decoding.
        (lambda: bomb_png(8_000, 8_000), r"8000x8000 pixels is larger than the 50-megapixel limit"),
    ],
    ids=["huge", "over-the-limit"],
)
def test_a_bomb_stops_the_import_naming_the_file_and_registers_nothing(nih_copy, bomb, message):
    path = plant(nih_copy, bomb())
    with pytest.raises(CommandError, match=message) as refused:
        call_command("import_dataset", kind="nih", root=str(nih_copy), resolution=32, name="nih-bomb", verbosity=0)
    text = str(refused.value)
    assert text.startswith(f"{path}: ") and "decompression bomb" in text
    assert "Traceback" not in text and " object at 0x" not in text
    assert not Dataset.objects.exists()


def test_a_text_chunk_bomb_is_refused_naming_the_file(nih_copy):
    path = plant(nih_copy, text_bomb_png())
    with pytest.raises(CommandError) as refused:
        call_command("import_dataset", kind="nih", root=str(nih_copy), resolution=32, name="nih-bomb", verbosity=0)
    assert str(refused.value).startswith(f"{path}: ")
    assert not Dataset.objects.exists()


def test_the_loaders_use_the_study_platforms_limit(tmp_path):
    assert transforms.MAX_PIXELS == images.MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(8_000, 8_000))
    with pytest.raises(transforms.DataError, match=str(path)):
        transforms.load_image(path, 32)
