"""`manage.py import_dataset` registers phantom and NIH data sets, and records nothing on bad input."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from django.core.management import CommandError, call_command

from generator.data import CHESTXRAY8_GRAPH, MIMIC_GRAPH, DataError, PhantomSCM
from generator.models import Dataset
from generator.registry import register_dataset

SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "nih-cxr-sample"


@pytest.mark.django_db
def test_phantom_import_records_counts_and_statistics(tmp_path):
    call_command("import_dataset", kind="phantom", root=str(tmp_path), resolution=32, n=40, seed=3, name="ph")
    dataset = Dataset.objects.get(name="ph")
    assert dataset.kind == "phantom" and dataset.resolution == 32 and dataset.options == {"seed": 3, "n": 40}
    assert dataset.split_counts == {"train": 32, "valid": 4, "test": 4}
    pa, _ = PhantomSCM(MIMIC_GRAPH).sample(40, 3)  # the same draw, made independently of the registry
    expected = torch.bincount(pa["disease"], minlength=3).tolist()
    assert [dataset.label_counts["total"][k] for k in ("healthy", "effusion", "pneumonia")] == expected
    assert dataset.graph == MIMIC_GRAPH.to_dict()
    ages = dataset.parent_stats["train"]["age"]
    assert 18 <= ages["min"] <= ages["mean"] <= ages["max"] <= 90
    assert sum(dataset.parent_stats["test"]["race"]["counts"].values()) == 4
    assert len(list(tmp_path.glob("*.pt"))) == 1  # rendered into the cache folder


@pytest.mark.django_db
def test_chestxray8_phantom_uses_its_graph(tmp_path):
    call_command("import_dataset", kind="phantom-cxr8", root=str(tmp_path), resolution=32, n=20)
    dataset = Dataset.objects.get()
    assert dataset.name == "phantom-cxr8-32px-n20-seed0"
    assert dataset.graph == CHESTXRAY8_GRAPH.to_dict() and set(dataset.parent_stats["train"]) == {
        "age",
        "sex",
        "disease",
    }


@pytest.mark.django_db
def test_nih_import_records_the_sample(capsys):
    call_command("import_dataset", kind="nih", root=str(SAMPLE), resolution=32, views="PA,AP", name="nih-sample")
    dataset = Dataset.objects.get(name="nih-sample")
    assert dataset.label_counts["total"] == {"healthy": 100, "effusion": 81, "pneumonia": 32}
    assert dataset.label_counts["excluded"]["other_findings_only"] == 100
    assert sum(dataset.split_counts.values()) == 213
    assert dataset.options == {"seed": 0, "views": ["PA", "AP"]}
    assert "registered nih-sample" in capsys.readouterr().out


@pytest.mark.django_db
def test_corrupt_image_is_named_and_nothing_is_registered(tmp_path):
    table = pd.read_csv(SAMPLE / "Data_Entry_2017.csv")
    rows = table[table["Finding Labels"].isin(["No Finding", "Effusion"])].head(12)
    (tmp_path / "images").mkdir()
    for name in rows["Image Index"]:
        shutil.copy(SAMPLE / "images" / name, tmp_path / "images" / name)
    rows.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    broken = rows["Image Index"].iloc[-1]
    (tmp_path / "images" / broken).write_bytes(b"not a png")
    with pytest.raises(CommandError, match=f"{broken}: unreadable or corrupt image"):
        call_command("import_dataset", kind="nih", root=str(tmp_path), resolution=32, views="PA,AP")
    assert Dataset.objects.count() == 0


@pytest.mark.django_db
def test_missing_columns_are_named_and_nothing_is_registered(tmp_path):
    (tmp_path / "images").mkdir()
    pd.read_csv(SAMPLE / "Data_Entry_2017.csv").drop(columns=["Finding Labels"]).to_csv(
        tmp_path / "Data_Entry_2017.csv", index=False
    )
    with pytest.raises(CommandError, match=r"missing column\(s\) \['Finding Labels'\]"):
        call_command("import_dataset", kind="nih", root=str(tmp_path))
    assert Dataset.objects.count() == 0


@pytest.mark.django_db
def test_bad_arguments_are_rejected_before_anything_is_read(tmp_path):
    with pytest.raises(CommandError, match="data set folder not found"):
        call_command("import_dataset", kind="nih", root=str(tmp_path / "absent"))
    with pytest.raises(CommandError, match="--n only applies"):
        call_command("import_dataset", kind="nih", root=str(SAMPLE), n=10)
    with pytest.raises(CommandError, match="resolution must be between"):
        call_command("import_dataset", kind="phantom", resolution=8, n=10)
    assert Dataset.objects.count() == 0


@pytest.mark.django_db
def test_duplicate_names_and_empty_splits_register_nothing(tmp_path):
    register_dataset(kind="phantom", root=str(tmp_path), resolution=32, name="taken", options={"n": 20})
    with pytest.raises(DataError, match="already registered"):
        register_dataset(kind="phantom", root=str(tmp_path), resolution=32, name="taken", options={"n": 20})
    with pytest.raises(DataError, match="'valid' split is empty"):
        register_dataset(kind="phantom", root="", resolution=32, name="tiny", options={"n": 3})
    with pytest.raises(DataError, match="unknown phantom options"):
        register_dataset(kind="phantom", root="", resolution=32, name="odd", options={"n": 20, "views": ["PA"]})
    assert list(Dataset.objects.values_list("name", flat=True)) == ["taken"]


@pytest.mark.django_db
def test_admin_shows_dataset_statistics(admin_client, tmp_path):
    dataset = register_dataset(kind="phantom", root=str(tmp_path), resolution=32, name="shown", options={"n": 20})
    listing = admin_client.get("/admin/generator/dataset/")
    assert listing.status_code == 200 and b"shown" in listing.content
    total = dataset.label_counts["total"]
    assert f"{total['healthy']} / {total['effusion']} / {total['pneumonia']}".encode() in listing.content
    detail = admin_client.get(f"/admin/generator/dataset/{dataset.pk}/change/")
    assert detail.status_code == 200 and b"parent statistics" in detail.content.lower()
    assert b"&quot;wcc&quot;" in detail.content
