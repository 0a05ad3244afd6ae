"""Corrupt, truncated and malformed data files given to the data set import, to training and to the stimulus import
fail with an error that names the file (and the row), and nothing is registered, trained or attached."""

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from generator.models import Dataset, TrainingRun
from generator.registry import register_dataset
from generator.services import runs, training
from generator.services.requests import TrainingRequest
from studyplatform import services
from studyplatform.models import AuditLog, Stimulus
from tests.study.factories import StudyFactory, add_block1_case

pytestmark = pytest.mark.django_db

NIH = Path(__file__).resolve().parents[2] / "fixtures" / "nih-cxr-sample"
CSV_NAME = "Data_Entry_2017.csv"


def first_listed_image(root):
    return (root / CSV_NAME).read_text().splitlines()[1].split(",")[0]


def replace_image(root, name, data):
    path = root / "images" / name
    path.unlink()
    path.write_bytes(data)
    return path


def import_nih(root):
    call_command("import_dataset", kind="nih", root=str(root), resolution=32, name="nih-test", verbosity=0)


def image_breakers():
    real = next((NIH / "images").iterdir()).read_bytes()
    return {
        "truncated png": real[: len(real) // 3],
        "empty file": b"",
        "text named .png": b"Image Index,Finding Labels\n",
        "png header only": real[:33],
    }


@pytest.mark.parametrize("breaker", sorted(image_breakers()))
def test_a_corrupt_image_stops_the_import_naming_the_file(nih_copy, breaker):
    name = first_listed_image(nih_copy)
    replace_image(nih_copy, name, image_breakers()[breaker])
    with pytest.raises(CommandError, match=name):
        import_nih(nih_copy)
    assert not Dataset.objects.exists()


def rewrite_csv(root, change):
    path = root / CSV_NAME
    path.write_text(change(path.read_text()))


def truncated_in_a_row(text):
    """The file cut off after the first four fields of a row in its middle, as an interrupted copy leaves it."""
    lines = text.splitlines()
    middle = len(lines) // 2
    return "\n".join(lines[:middle] + [",".join(lines[middle].split(",")[:4])]) + "\n"


CSV_BREAKERS = {
    "truncated mid-row": (lambda text: truncated_in_a_row(text), rf"{CSV_NAME}, row \d+: no value"),
    "missing column": (lambda text: text.replace("Patient Age", "Age", 1), r"missing column.*Patient Age"),
    "age not a number": (lambda text: text.replace(",60,M,PA,", ",sixty,M,PA,", 1), r"row 2: 'Patient Age'"),
    "unknown finding": (lambda text: text.replace("Atelectasis|Effusion", "Atelectasis|Cancer", 1), r"row 2"),
    "image listed twice": (lambda text: text + text.splitlines()[1] + "\n", r"listed twice"),
    "binary garbage": (lambda text: "\x00\x01\x02PK" * 100, rf"{CSV_NAME}"),
    "empty file": (lambda text: "", rf"{CSV_NAME}"),
    "listed image missing": (
        lambda text: text + text.splitlines()[1].replace("_000.png", "_999.png", 1) + "\n",
        "missing",
    ),
}


@pytest.mark.parametrize("breaker", sorted(CSV_BREAKERS))
def test_a_malformed_label_file_stops_the_import_naming_the_file(nih_copy, breaker):
    change, message = CSV_BREAKERS[breaker]
    rewrite_csv(nih_copy, change)
    with pytest.raises(CommandError, match=message) as raised:
        import_nih(nih_copy)
    assert CSV_NAME in str(raised.value) or "_999.png" in str(raised.value)
    assert not Dataset.objects.exists()


def test_an_intact_copy_imports(nih_copy):
    """The fixture itself is fine, so every failure above comes from the damage done to it."""
    import_nih(nih_copy)
    assert Dataset.objects.get().split_counts["train"] > 0


@pytest.mark.ml
def test_an_image_corrupted_after_registration_fails_training_cleanly(nih_copy, settings, tmp_path):
    settings.ARTIFACTS_ROOT = tmp_path / "artifacts"
    dataset = register_dataset(kind="nih", root=nih_copy, resolution=32, name="nih-ok")
    run = runs.create_training_run(dataset, "baseline", "test-32", steps=1)
    name = first_listed_image(nih_copy)
    replace_image(nih_copy, name, b"\x89PNG\r\n\x1a\n broken")

    with pytest.raises(ValueError, match=name):
        training.run_training(TrainingRequest(run.name))
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and name in run.error
    assert run.checkpoints == {}
    assert not list(Path(settings.ARTIFACTS_ROOT).rglob("*.pt"))


def test_a_corrupt_counterfactual_in_a_manifest_attaches_nothing(media_root, tmp_path):
    study = StudyFactory()
    case = add_block1_case(study, 0, models=())
    folder = tmp_path / "manifest"
    folder.mkdir()
    good = (NIH / "images" / case.source_id).read_bytes()
    (folder / "good.png").write_bytes(good)
    (folder / "bad.png").write_bytes(good[: len(good) // 4])
    item = {"source_id": case.source_id, "intervention": {"disease": case.cf_condition}, "seed": 0}
    manifest = {
        "model_role": "baseline",
        "run": "r1",
        "items": [{**item, "file": "good.png"}, {**item, "file": "bad.png"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    stimuli, audit_rows = Stimulus.objects.count(), AuditLog.objects.count()

    with pytest.raises(ValidationError, match="bad.png"):
        services.import_counterfactual_manifest(study, folder)
    (folder / "manifest.json").write_text('{"model_role": "baseline", "items": [')
    with pytest.raises(ValidationError, match="manifest.json"):
        services.import_counterfactual_manifest(study, folder)
    assert (Stimulus.objects.count(), AuditLog.objects.count()) == (stimuli, audit_rows)
    assert not case.stimuli.exclude(source="real").exists()
