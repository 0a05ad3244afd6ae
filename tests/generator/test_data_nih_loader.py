"""The NIH ChestX-ray8/14 loader on the real 313-image sample, and its handling of bad input."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from generator.data import CHESTXRAY8_GRAPH, DataError, load_nih_splits, load_splits

SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "nih-cxr-sample"
SPLITS = ("train", "valid", "test")


def expected_counts(views, cofinding_rule="pneumonia-wins"):
    """Class counts worked out directly from the label file, independently of the loader."""
    table = pd.read_csv(SAMPLE / "Data_Entry_2017.csv")
    table = table[table["View Position"].isin(views)]
    findings = table["Finding Labels"].str.split("|").apply(set)
    has_effusion = findings.apply(lambda f: "Effusion" in f)
    has_pneumonia = findings.apply(lambda f: "Pneumonia" in f)
    both = int((has_effusion & has_pneumonia).sum())
    counts = {
        "healthy": int((table["Finding Labels"] == "No Finding").sum()),
        "effusion": int((has_effusion & ~has_pneumonia).sum()),
        "pneumonia": int((has_pneumonia & ~has_effusion).sum()),
    }
    if cofinding_rule == "pneumonia-wins":
        counts["pneumonia"] += both
    elif cofinding_rule == "effusion-wins":
        counts["effusion"] += both
    return counts


def total_counts(splits):
    totals = {"healthy": 0, "effusion": 0, "pneumonia": 0}
    for split in SPLITS:
        for label, n in splits[split].label_counts().items():
            totals[label] += n
    return totals


@pytest.fixture(scope="module")
def pa_ap_splits():
    return load_nih_splits(SAMPLE, 32, views=("PA", "AP"), seed=0)


def test_counts_per_class_match_the_label_file(pa_ap_splits):
    assert total_counts(pa_ap_splits) == expected_counts(("PA", "AP"))
    # The sample's README documents the same numbers.
    assert total_counts(pa_ap_splits) == {"healthy": 100, "effusion": 81, "pneumonia": 32}


def test_pa_only_is_the_default_view():
    splits = load_nih_splits(SAMPLE, 32)
    assert total_counts(splits) == expected_counts(("PA",))
    assert sum(len(splits[s]) for s in SPLITS) < 213


def test_splits_are_patient_disjoint_and_images_are_scaled(pa_ap_splits):
    table = pd.read_csv(SAMPLE / "Data_Entry_2017.csv").set_index("Image Index")
    patients = {s: set(table.loc[pa_ap_splits[s].ids, "Patient ID"]) for s in SPLITS}
    assert not (patients["train"] & patients["valid"]) and not (patients["train"] & patients["test"])
    assert not (patients["valid"] & patients["test"])
    assert all(len(pa_ap_splits[s]) > 0 for s in SPLITS)
    train = pa_ap_splits["train"]
    assert train.graph is CHESTXRAY8_GRAPH
    assert train.x.shape[1:] == (1, 32, 32) and train.x.dtype == torch.float32
    assert train.x.min() >= -1.0 and train.x.max() <= 1.0 and train.x.std() > 0.2
    first = train.ids[0]
    assert train.pa["age"][0].item() == table.loc[first, "Patient Age"]
    assert train.pa["sex"][0].item() == (1.0 if table.loc[first, "Patient Gender"] == "M" else 0.0)


def test_cofinding_rules_decide_images_with_effusion_and_pneumonia():
    for rule in ("exclude", "effusion-wins"):
        splits = load_nih_splits(SAMPLE, 32, views=("PA", "AP"), cofinding_rule=rule)
        assert total_counts(splits) == expected_counts(("PA", "AP"), rule)


def nih_tree(tmp_path, rows, csv_name="Data_Entry_2017.csv"):
    """A small NIH-layout folder holding the given label rows and their real images."""
    (tmp_path / "images").mkdir()
    for name in rows["Image Index"]:
        if (SAMPLE / "images" / name).exists():
            shutil.copy(SAMPLE / "images" / name, tmp_path / "images" / name)
    rows.to_csv(tmp_path / csv_name, index=False)
    return tmp_path


@pytest.fixture
def few_rows():
    table = pd.read_csv(SAMPLE / "Data_Entry_2017.csv")
    healthy = table[table["Finding Labels"] == "No Finding"].head(4)
    effusion = table[table["Finding Labels"] == "Effusion"].head(4)
    return pd.concat([healthy, effusion]).reset_index(drop=True)


def test_v2020_file_name_and_sex_column_are_read(tmp_path, few_rows):
    rows = few_rows.rename(columns={"Patient Gender": "Patient Sex"})
    root = nih_tree(tmp_path, rows, "Data_Entry_2017_v2020.csv")
    splits = load_splits("nih", root, 32, {"views": ["PA", "AP"], "fractions": [0.5, 0.25, 0.25]})
    assert sum(len(splits[s]) for s in SPLITS) == 8
    assert total_counts(splits) == {"healthy": 4, "effusion": 4, "pneumonia": 0}


def test_missing_column_is_named(tmp_path, few_rows):
    root = nih_tree(tmp_path, few_rows.drop(columns=["View Position"]))
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv: missing column\(s\) \['View Position'\]"):
        load_nih_splits(root, 32)


def test_corrupt_image_is_named(tmp_path, few_rows):
    root = nih_tree(tmp_path, few_rows)
    broken = few_rows["Image Index"][2]
    (root / "images" / broken).write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    with pytest.raises(DataError, match=f"{broken}: unreadable or corrupt image"):
        load_nih_splits(root, 32, views=("PA", "AP"))


def test_missing_image_is_named(tmp_path, few_rows):
    root = nih_tree(tmp_path, few_rows)
    gone = few_rows["Image Index"][5]
    (root / "images" / gone).unlink()
    with pytest.raises(DataError, match=f"{gone}: image listed in the label file is missing"):
        load_nih_splits(root, 32, views=("PA", "AP"))


def test_label_outside_the_nih_vocabulary_names_the_row(tmp_path, few_rows):
    rows = few_rows.copy()
    rows.loc[3, "Finding Labels"] = "Effusion|Broken Rib"
    root = nih_tree(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 5: finding\(s\) \['Broken Rib'\] are not NIH labels"):
        load_nih_splits(root, 32)


def test_bad_sex_names_the_row(tmp_path, few_rows):
    rows = few_rows.copy()
    rows.loc[0, "Patient Gender"] = "X"
    root = nih_tree(tmp_path, rows)
    with pytest.raises(DataError, match="row 2: 'Patient Gender' must be M or F"):
        load_nih_splits(root, 32, views=("PA", "AP"))


def test_empty_selection_is_an_error(tmp_path, few_rows):
    rows = few_rows.assign(**{"Finding Labels": "Mass"})
    root = nih_tree(tmp_path, rows)
    with pytest.raises(DataError, match="no images left"):
        load_nih_splits(root, 32, views=("PA", "AP"))


def test_unknown_view_and_rule_are_rejected():
    with pytest.raises(DataError, match="views"):
        load_nih_splits(SAMPLE, 32, views=("LATERAL",))
    with pytest.raises(DataError, match="co-finding rule"):
        load_nih_splits(SAMPLE, 32, cofinding_rule="both")
