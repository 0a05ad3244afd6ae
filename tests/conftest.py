"""Shared fixtures."""

import shutil
from pathlib import Path

import pytest

NIH_SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "nih-cxr-sample"


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (small models run faster and reproducibly so), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def media_root(settings, tmp_path):
    """Stimulus files of a test go to its own folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def open_study(db, media_root):
    """An open study with a complete, small stimulus set (3 Block-1 patients, 2 Block-2 cases)."""
    from tests.study.factories import complete_study

    return complete_study()


@pytest.fixture
def participant(open_study):
    from studyplatform import services

    participant, _ = services.start_session(
        open_study, external_id="5f2a9c0e1b3d4a6f8e7c9b01", prolific_study_id="", prolific_session_id="S-fixture-01"
    )
    return participant


@pytest.fixture(autouse=True)
def _empty_cache():
    """Rate-limit counters start at zero in every test."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def nih_copy(tmp_path):
    """A private NIH folder: the label file copied, the images linked (the tests replace the ones they break)."""
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    shutil.copy(NIH_SAMPLE / "Data_Entry_2017.csv", root / "Data_Entry_2017.csv")
    for image in (NIH_SAMPLE / "images").iterdir():
        (root / "images" / image.name).symlink_to(image)
    return root
