"""The MIMIC-CXR-JPG loader on a tiny tree in the native MIMIC-CXR / MIMIC-IV layout, built here."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from generator.data import MIMIC_GRAPH, DataError, load_mimic_splits, load_splits

LABELS = ["Atelectasis", "Cardiomegaly", "No Finding", "Pleural Effusion", "Pneumonia", "Support Devices"]

# (study, subject, view, date, time, labels, image size) -- labels as {column: value}
STUDIES = [
    (50000001, 10000001, "PA", 21520301, 100000.0, {"No Finding": 1.0}),
    (50000002, 10000001, "AP", 21530110, 143000.5, {"Pleural Effusion": 1.0, "Support Devices": 1.0}),
    (50000003, 10000002, "PA", 21610505, 10000.0, {"Pleural Effusion": 1.0, "Pneumonia": 1.0}),
    (50000004, 10000002, "PA", 21620101, 120000.0, {"Pneumonia": -1.0}),
    (50000005, 10000003, "PA", 21400707, 120000.0, {"Pleural Effusion": 1.0, "Pneumonia": 0.0}),
    (50000006, 10000003, "PA", 21410101, 120000.0, {"Atelectasis": 1.0}),
    (50000007, 10000004, "PA", 21560101, 120000.0, {"No Finding": 1.0}),
    (50000008, 10000005, "PA", 21700101, 120000.0, {"No Finding": 1.0}),
    (50000009, 10000006, "PA", 21800506, 90000.0, {"No Finding": 1.0}),
]
PATIENTS = [  # subject, gender, anchor_age, anchor_year
    (10000001, "F", 50, 2150),
    (10000002, "M", 70, 2160),
    (10000003, "M", 30, 2140),
    (10000004, "F", 60, 2155),
    (10000005, "M", 45, 2170),
    (10000006, "F", 38, 2179),
]
ADMISSIONS = [  # subject, race
    (10000001, "WHITE"),
    (10000002, "WHITE"),
    (10000002, "WHITE - OTHER EUROPEAN"),
    (10000002, "BLACK/AFRICAN AMERICAN"),
    (10000003, "ASIAN - CHINESE"),
    (10000004, "UNKNOWN"),
    (10000005, "WHITE"),
    (10000006, "BLACK/CAPE VERDEAN"),
]
LABEVENTS = [  # subject, itemid, charttime, valuenum
    (10000001, 51301, "2152-03-01 08:00:00", 7.5),
    (10000001, 51301, "2152-02-20 08:00:00", 12.0),
    (10000001, 51300, "2153-01-11 09:00:00", 9.1),
    (10000002, 51301, "2161-05-04 23:00:00", 15.2),
    (10000002, 51301, "2162-01-01 11:00:00", 6.0),
    (10000003, 50912, "2140-07-07 12:00:00", 1.0),  # creatinine at the study time: not a white-cell count
    (10000003, 51300, "2140-07-08 14:00:00", 11.0),
    (10000004, 51301, "2156-01-01 10:00:00", 8.0),
    (10000005, 51301, "2170-01-11 12:00:00", 10.0),  # ten days off: outside the window
    (10000006, 51301, "2180-05-06 08:00:00", 5.0),
]
# Worked out by hand from the tables above, PA only: study -> (disease, age, sex, race, wcc).
EXPECTED_PA = {
    50000001: (0, 52.0, 0.0, 0, 7.5),
    50000003: (2, 71.0, 1.0, 0, 15.2),  # effusion and pneumonia: pneumonia wins
    50000005: (1, 30.0, 1.0, 1, 11.0),
    50000009: (0, 39.0, 0.0, 2, 5.0),
}


def dicom_id(study, view):
    return f"d{study}{view.lower()}"


def build_mimic_tree(root, studies=STUDIES, chexpert_rows=None):
    root.mkdir(parents=True, exist_ok=True)
    metadata, chexpert = [], []
    rng = np.random.default_rng(0)
    for study, subject, view, date, time, labels in studies:
        for image_view in (view, "LATERAL"):
            dicom = dicom_id(study, image_view)
            folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, size=(48, 40), dtype=np.uint8)  # portrait, like many films
            Image.fromarray(pixels).save(folder / f"{dicom}.jpg")
            metadata.append(
                {
                    "dicom_id": dicom,
                    "subject_id": subject,
                    "study_id": study,
                    "ViewPosition": image_view,
                    "Rows": 48,
                    "Columns": 40,
                    "StudyDate": date,
                    "StudyTime": time,
                }
            )
        chexpert.append({"subject_id": subject, "study_id": study, **{c: labels.get(c, np.nan) for c in LABELS}})
    pd.DataFrame(metadata).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(chexpert_rows or chexpert).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    hosp = root / "mimic-iv" / "hosp"
    hosp.mkdir(parents=True)
    pd.DataFrame(PATIENTS, columns=["subject_id", "gender", "anchor_age", "anchor_year"]).to_csv(
        hosp / "patients.csv.gz", index=False
    )
    pd.DataFrame(
        [(s, 20000000 + i, race) for i, (s, race) in enumerate(ADMISSIONS)], columns=["subject_id", "hadm_id", "race"]
    ).to_csv(hosp / "admissions.csv.gz", index=False)
    pd.DataFrame(
        [(i, s, item, t, str(v), v) for i, (s, item, t, v) in enumerate(LABEVENTS)],
        columns=["labevent_id", "subject_id", "itemid", "charttime", "value", "valuenum"],
    ).to_csv(hosp / "labevents.csv.gz", index=False)
    return root


def load(root, **options):
    options.setdefault("fractions", (0.5, 0.25, 0.25))
    return load_mimic_splits(root, 32, mimic_iv_root=root / "mimic-iv", **options)


def merged(splits):
    rows = {}
    for split in ("train", "valid", "test"):
        data = splits[split]
        for i, image in enumerate(data.ids):
            study = int(image.split(".")[0][1:9])
            rows[study] = (
                split,
                tuple(round(data.pa[n][i].item(), 4) for n in ("disease", "age", "sex", "race", "wcc")),
            )
    return rows


def test_pa_images_with_their_parents_and_labels(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    splits = load(root)
    rows = merged(splits)
    assert {study: values for study, (_, values) in rows.items()} == {
        study: tuple(float(v) for v in values) for study, values in EXPECTED_PA.items()
    }
    assert splits["train"].graph is MIMIC_GRAPH
    assert splits["train"].pa["disease"].dtype == torch.int64 and splits["train"].pa["age"].dtype == torch.float32
    x = torch.cat([splits[s].x for s in ("train", "valid", "test")])
    assert x.shape == (4, 1, 32, 32) and x.min() >= -1.0 and x.max() <= 1.0
    excluded = splits["train"].info["excluded"]
    assert excluded["other_view"] == 10  # every lateral plus the AP study
    assert excluded["race_other_or_unknown"] == 1 and excluded["no_wcc_in_window"] == 1


def test_splits_are_patient_disjoint(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    splits = load(root, views=("PA", "AP"))
    subjects = {}
    for study, (split, _) in merged(splits).items():
        subject = next(s for st, s, *_ in STUDIES if st == study)
        subjects.setdefault(subject, set()).add(split)
    assert all(len(in_splits) == 1 for in_splits in subjects.values())
    assert sum(len(splits[s]) for s in splits) == 5  # AP effusion study joins


def test_rules_for_co_findings_and_uncertain_labels(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    assert 50000003 not in merged(load(root, cofinding_rule="exclude"))
    assert merged(load(root, cofinding_rule="effusion-wins"))[50000003][1][0] == 1.0
    assert merged(load(root, uncertain="positive"))[50000004][1][0] == 2.0
    assert 50000004 not in merged(load(root, uncertain="negative"))  # then no finding at all


def test_load_splits_dispatches_to_mimic(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    options = {"mimic_iv_root": str(root / "mimic-iv"), "fractions": [0.5, 0.25, 0.25]}
    splits = load_splits("mimic", root, 32, options)
    assert sum(len(splits[s]) for s in splits) == 4


def test_label_outside_the_mapping_names_the_row(tmp_path):
    rows = [
        {"subject_id": s, "study_id": st, **{c: labels.get(c, np.nan) for c in LABELS}} for st, s, *_, labels in STUDIES
    ]
    rows[2]["Pneumonia"] = 2.0
    root = build_mimic_tree(tmp_path / "mimic", chexpert_rows=rows)
    with pytest.raises(DataError, match=r"chexpert\.csv\.gz, row 4: 'Pneumonia' = 2\.0"):
        load(root)


def test_corrupt_image_is_named(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    broken = root / "files" / "p10" / "p10000002" / "s50000003" / f"{dicom_id(50000003, 'PA')}.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=f"{broken.name}: unreadable or corrupt image"):
        load(root)


def test_missing_image_is_named(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    gone = root / "files" / "p10" / "p10000003" / "s50000005" / f"{dicom_id(50000005, 'PA')}.jpg"
    gone.unlink()
    with pytest.raises(DataError, match=f"{gone.name}: image listed in the metadata is missing"):
        load(root)


def test_missing_column_and_missing_table_are_named(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic")
    metadata = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz").drop(columns=["ViewPosition"])
    metadata.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    with pytest.raises(DataError, match=r"metadata\.csv\.gz: missing column\(s\) \['ViewPosition'\]"):
        load(root)
    complete = build_mimic_tree(tmp_path / "complete")
    with pytest.raises(DataError, match="patients.csv: file not found"):
        load_mimic_splits(complete, 32)  # MIMIC-IV tables are not in ROOT itself


def test_empty_selection_is_an_error(tmp_path):
    root = build_mimic_tree(tmp_path / "mimic", studies=[s for s in STUDIES if s[0] in (50000006, 50000007)])
    with pytest.raises(DataError, match="no images left"):
        load(root)
