"""MIMIC-CXR-JPG with MIMIC-IV demographics and white-cell counts, in their native layouts.

    ROOT/mimic-cxr-2.0.0-metadata.csv        dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime
    ROOT/mimic-cxr-2.0.0-chexpert.csv        subject_id, study_id, No Finding, Pleural Effusion, Pneumonia, ...
                                             (or mimic-cxr-2.0.0-negbio.csv with labeler="negbio")
    ROOT/files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
    MIMIC_IV/[hosp/]patients.csv             subject_id, gender, anchor_age, anchor_year
    MIMIC_IV/[hosp/]admissions.csv           subject_id, race (MIMIC-IV >= 2.0) or ethnicity (1.0)
    MIMIC_IV/[hosp/]labevents.csv            subject_id, itemid, charttime, valuenum

Every file may also be gzipped (.csv.gz). MIMIC_IV defaults to ROOT.

Parents (MIMIC_GRAPH):
- age at the study = anchor_age + (study year - anchor_year); MIMIC shifts a patient's dates consistently across
  MIMIC-IV and MIMIC-CXR, so the difference of years is meaningful.
- sex from patients.gender (M -> 1, F -> 0).
- race from admissions: the patient's most frequent recorded race that maps to white/asian/black (any string
  containing WHITE, ASIAN or BLACK); patients with only other or unknown entries are excluded.
- wcc: white-cell count in 10^9/L (= K/uL) from labevents itemids 51300 ("WBC Count") and 51301 ("White Blood
  Cells"): the value charted nearest to the study time within `wcc_window_hours` (default 72 h) either side;
  studies without one are excluded.
- disease: Pleural Effusion -> 1, Pneumonia -> 2, No Finding -> 0 (co-findings and uncertain labels by rule).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .datasets import (
    COFINDING_RULES,
    CXRDataset,
    DataError,
    disease_from_findings,
    parents_from_frame,
    split_dataset,
)
from .graph import MIMIC_GRAPH
from .transforms import load_image

WBC_ITEMIDS = (51300, 51301)
RACE_CATEGORIES = MIMIC_GRAPH["race"].categories  # ("white", "asian", "black")
LABEL_COLUMNS = ("No Finding", "Pleural Effusion", "Pneumonia")
UNCERTAIN_RULES = ("exclude", "negative", "positive")
FRONTAL_VIEWS = ("PA", "AP")


def load_mimic_splits(
    root,
    resolution,
    views=("PA",),
    seed=0,
    fractions=(0.8, 0.1, 0.1),
    cofinding_rule="pneumonia-wins",
    labeler="chexpert",
    uncertain="exclude",
    wcc_window_hours=72,
    mimic_iv_root=None,
    progress=None,
):
    """Patient-level train/valid/test splits of MIMIC-CXR-JPG at `resolution` px. Raises DataError naming the file."""
    root = Path(root)
    mimic_iv_root = Path(mimic_iv_root) if mimic_iv_root else root
    frame, exclusions = select_mimic(
        root, mimic_iv_root, tuple(views), cofinding_rule, labeler, uncertain, wcc_window_hours
    )
    images = torch.empty(len(frame), 1, resolution, resolution, dtype=torch.float32)
    for i, row in enumerate(frame.itertuples(index=False)):
        path = root / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}" / f"s{row.study_id}"
        path = path / f"{row.dicom_id}.jpg"
        if not path.exists():
            raise DataError(f"{path}: image listed in the metadata is missing")
        images[i] = load_image(path, resolution)
        if progress:
            progress(i + 1, len(frame))
    pa = parents_from_frame(frame, MIMIC_GRAPH)
    info = {
        "source": "mimic",
        "views": list(views),
        "cofinding_rule": cofinding_rule,
        "labeler": labeler,
        "uncertain": uncertain,
        "wcc_itemids": list(WBC_ITEMIDS),
        "wcc_window_hours": wcc_window_hours,
        "excluded": exclusions,
    }
    ids = [f"{d}.jpg" for d in frame["dicom_id"]]
    info["view_positions"] = dict(zip(ids, frame["view"]))  # for the screening of study stimuli
    dataset = CXRDataset(images, pa, MIMIC_GRAPH, ids, resolution, info=info)
    return split_dataset(dataset, frame["subject_id"].to_numpy(), fractions, seed)


def select_mimic(root, mimic_iv_root, views, cofinding_rule, labeler, uncertain, wcc_window_hours):
    """One row per selected image with its parents, and the number of images excluded at each step."""
    if not views or set(views) - set(FRONTAL_VIEWS):
        raise DataError(f"views must be a non-empty subset of {FRONTAL_VIEWS}, got {list(views)}")
    if cofinding_rule not in COFINDING_RULES:
        raise DataError(f"unknown co-finding rule {cofinding_rule!r}; choose one of {COFINDING_RULES}")
    if uncertain not in UNCERTAIN_RULES:
        raise DataError(f"unknown rule for uncertain labels {uncertain!r}; choose one of {UNCERTAIN_RULES}")
    if labeler not in ("chexpert", "negbio"):
        raise DataError(f"labeler must be 'chexpert' or 'negbio', got {labeler!r}")

    metadata_path = _find(root, "mimic-cxr-2.0.0-metadata.csv")
    metadata = _read(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"))
    labels_path = _find(root, f"mimic-cxr-2.0.0-{labeler}.csv")
    labels = _read(labels_path, ("subject_id", "study_id", *LABEL_COLUMNS))
    patients_path = _find(mimic_iv_root, "patients.csv")
    patients = _read(patients_path, ("subject_id", "gender", "anchor_age", "anchor_year"))
    admissions_path = _find(mimic_iv_root, "admissions.csv")
    admissions = _read(admissions_path, ("subject_id",))
    labevents_path = _find(mimic_iv_root, "labevents.csv")

    exclusions = {}
    frame = metadata.assign(view=metadata["ViewPosition"].astype(str).str.strip().str.upper())
    in_view = frame["view"].isin(views)
    exclusions["other_view"] = int((~in_view).sum())
    frame = frame.loc[in_view]
    frame = frame.assign(study_time=_study_datetimes(frame, metadata_path))

    disease = _disease_labels(labels, labels_path, cofinding_rule, uncertain)
    frame = frame.merge(disease, on=["subject_id", "study_id"], how="left")
    exclusions["not_in_the_3_classes"] = int((frame["disease"].isna() | (frame["disease"] < 0)).sum())
    frame = frame.loc[frame["disease"].notna() & (frame["disease"] >= 0)]

    frame = frame.merge(_demographics(patients, patients_path), on="subject_id", how="left")
    exclusions["no_patient_record"] = int(frame["anchor_age"].isna().sum())
    frame = frame.loc[frame["anchor_age"].notna()]
    frame = frame.assign(age=frame["anchor_age"] + (frame["study_time"].dt.year - frame["anchor_year"]))

    frame = frame.merge(_race_per_patient(admissions, admissions_path), on="subject_id", how="left")
    exclusions["race_other_or_unknown"] = int(frame["race"].isna().sum())
    frame = frame.loc[frame["race"].notna()]

    wcc = _white_cell_counts(labevents_path, frame["subject_id"].unique())
    frame = _nearest_wcc(frame, wcc, pd.Timedelta(hours=wcc_window_hours))
    exclusions["no_wcc_in_window"] = int(frame["wcc"].isna().sum())
    frame = frame.loc[frame["wcc"].notna()]
    if frame.empty:
        raise DataError(f"{metadata_path}: no images left after selecting views, labels, demographics and WCC")
    columns = ["dicom_id", "subject_id", "study_id", "age", "sex", "race", "wcc", "disease", "view"]
    frame = frame[columns].sort_values(["subject_id", "study_id", "dicom_id"]).reset_index(drop=True)
    return frame.astype({"disease": "int64", "race": "int64", "subject_id": "int64", "study_id": "int64"}), exclusions


def _find(folder, name):
    for candidate in (folder / name, folder / f"{name}.gz", folder / "hosp" / name, folder / "hosp" / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"{folder / name}: file not found (also looked for .gz and under hosp/)")


def _read(path, required, **kwargs):
    try:
        table = pd.read_csv(path, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: unreadable CSV ({error})") from error
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    for column in ("subject_id", "study_id"):
        if column in required and not pd.api.types.is_integer_dtype(table[column]):
            raise DataError(f"{path}: column {column!r} must hold integer ids")
    return table


def _study_datetimes(frame, path):
    """StudyDate is YYYYMMDD and StudyTime HHMMSS(.fff), both read as numbers by pandas."""
    dates = frame["StudyDate"].astype("Int64").astype(str)
    times = frame["StudyTime"].fillna(0).astype(float).astype(int).astype(str).str.zfill(6)
    parsed = pd.to_datetime(dates + times, format="%Y%m%d%H%M%S", errors="coerce")
    if parsed.isna().any():
        row = parsed.index[parsed.isna()][0]
        raise DataError(f"{path}, row {row + 2}: StudyDate/StudyTime is not a valid date and time")
    return parsed


def _disease_labels(labels, path, cofinding_rule, uncertain):
    values = labels[list(LABEL_COLUMNS)]
    allowed = values.isna() | values.isin([1.0, 0.0, -1.0])
    if not allowed.all().all():
        row, column = next((r, c) for c in LABEL_COLUMNS for r in values.index if not allowed.at[r, c])
        value = values.at[row, column]
        value = value.item() if hasattr(value, "item") else value
        raise DataError(f"{path}, row {row + 2}: {column!r} = {value!r}; labels must be 1, 0, -1 or empty")
    uncertain_value = {"exclude": np.nan, "negative": 0.0, "positive": 1.0}[uncertain]
    undecided = (values["Pleural Effusion"] == -1) | (values["Pneumonia"] == -1)
    values = values.replace(-1.0, 0.0 if uncertain == "exclude" else uncertain_value)
    disease = disease_from_findings(
        values["Pleural Effusion"] == 1, values["Pneumonia"] == 1, values["No Finding"] == 1, cofinding_rule
    )
    if uncertain == "exclude":
        disease[undecided.to_numpy()] = -1
    return pd.DataFrame({"subject_id": labels["subject_id"], "study_id": labels["study_id"], "disease": disease})


def _demographics(patients, path):
    sex = patients["gender"].astype(str).str.strip().str.upper()
    bad = ~sex.isin(["M", "F"])
    if bad.any():
        row = bad.index[bad][0]
        raise DataError(f"{path}, row {row + 2}: gender must be M or F, got {patients.at[row, 'gender']!r}")
    return pd.DataFrame(
        {
            "subject_id": patients["subject_id"],
            "sex": (sex == "M").astype(float),
            "anchor_age": patients["anchor_age"].astype(float),
            "anchor_year": patients["anchor_year"].astype(float),
        }
    ).drop_duplicates("subject_id")


def _race_per_patient(admissions, path):
    column = "race" if "race" in admissions.columns else "ethnicity" if "ethnicity" in admissions.columns else None
    if column is None:
        raise DataError(f"{path}: missing column 'race' (or 'ethnicity' in MIMIC-IV 1.0)")
    text = admissions[column].fillna("").astype(str).str.upper()
    race = pd.Series(np.nan, index=admissions.index)
    for index, name in enumerate(RACE_CATEGORIES):
        race[text.str.contains(name.upper(), regex=False)] = index
    known = pd.DataFrame({"subject_id": admissions["subject_id"], "race": race}).dropna()
    if known.empty:
        return pd.DataFrame({"subject_id": pd.Series(dtype="int64"), "race": pd.Series(dtype=float)})
    counts = known.groupby(["subject_id", "race"]).size().reset_index(name="count")
    counts = counts.sort_values(["subject_id", "count", "race"], ascending=[True, False, True])
    return counts.drop_duplicates("subject_id")[["subject_id", "race"]]


def _white_cell_counts(path, subjects):
    """WBC values of the selected patients; read in chunks because the full labevents table is very large."""
    subjects = set(int(s) for s in subjects)
    parts = []
    try:
        reader = pd.read_csv(
            path, usecols=["subject_id", "itemid", "charttime", "valuenum"], chunksize=2_000_000, low_memory=False
        )
        for chunk in reader:
            chunk = chunk.loc[chunk["itemid"].isin(WBC_ITEMIDS) & chunk["subject_id"].isin(subjects)]
            parts.append(chunk)
    except ValueError as error:
        raise DataError(f"{path}: needs columns subject_id, itemid, charttime, valuenum ({error})") from error
    except (OSError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: unreadable CSV ({error})") from error
    wcc = pd.concat(parts) if parts else pd.DataFrame(columns=["subject_id", "itemid", "charttime", "valuenum"])
    wcc = wcc.assign(charttime=pd.to_datetime(wcc["charttime"], errors="coerce"))
    wcc = wcc.loc[wcc["charttime"].notna() & (pd.to_numeric(wcc["valuenum"], errors="coerce") > 0)]
    return wcc.assign(wcc=wcc["valuenum"].astype(float))[["subject_id", "charttime", "wcc"]]


def _nearest_wcc(frame, wcc, window):
    """Attach the WBC value charted nearest to each study time within +/- window (merge_asof per patient)."""
    left = frame.sort_values("study_time").reset_index(drop=True)
    right = wcc.sort_values("charttime").reset_index(drop=True)
    right = right.astype({"subject_id": left["subject_id"].dtype})
    left = left.assign(study_time=left["study_time"].astype("datetime64[ns]"))
    right = right.assign(charttime=right["charttime"].astype("datetime64[ns]"))
    return pd.merge_asof(
        left,
        right,
        left_on="study_time",
        right_on="charttime",
        by="subject_id",
        direction="nearest",
        tolerance=window,
    )
