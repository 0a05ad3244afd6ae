"""NIH ChestX-ray8/14 in its native layout.

    ROOT/Data_Entry_2017_v2020.csv  (or Data_Entry_2017.csv; .csv.gz also read)
    ROOT/images/00000001_000.png    (or the release's ROOT/images_001/images/... folders)

Conventions follow torchxrayvision's NIH_Dataset: the same label names (e.g. "Effusion", "Pleural_Thickening"),
the v2020 column "Patient Sex" read as "Patient Gender", views filtered on "View Position". Labels use the paper's
3-class mapping (see `disease_from_findings`); parents follow CHESTXRAY8_GRAPH (age, sex, disease).
"""

import re
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
from .graph import CHESTXRAY8_GRAPH
from .transforms import load_image

NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "View Position")
FRONTAL_VIEWS = ("PA", "AP")
AGE_RANGE = (CHESTXRAY8_GRAPH["age"].low, CHESTXRAY8_GRAPH["age"].high)


def find_nih_csv(root):
    root = Path(root)
    for name in CSV_NAMES:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.exists():
                return candidate
    raise DataError(f"{root}: no NIH label file ({' or '.join(CSV_NAMES)})")


def read_nih_table(csv_path):
    """The label file with its columns checked; "Patient Sex" (v2020) is renamed to "Patient Gender"."""
    try:
        table = pd.read_csv(csv_path, dtype={"Patient ID": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{csv_path}: unreadable CSV ({error})") from error
    table.columns = [str(c).strip() for c in table.columns]
    if "Patient Gender" not in table.columns and "Patient Sex" in table.columns:
        table = table.rename(columns={"Patient Sex": "Patient Gender"})
    missing = [c for c in (*REQUIRED_COLUMNS, "Patient Gender") if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}")
    # A truncated file ends in a short row; its empty cells would otherwise pass as "another view" and be dropped.
    required = [*REQUIRED_COLUMNS, "Patient Gender"]
    incomplete = table[required].isna().any(axis=1).to_numpy()
    if incomplete.any():
        row = int(incomplete.argmax())
        empty = [c for c in required if pd.isna(table[c].iloc[row])]
        raise DataError(f"{csv_path}, row {row + 2}: no value for {empty} (truncated or malformed file?)")
    if table["Image Index"].duplicated().any():
        duplicate = table.loc[table["Image Index"].duplicated(), "Image Index"].iloc[0]
        raise DataError(f"{csv_path}: image {duplicate!r} is listed twice")
    return table


def select_nih(table, csv_path, views=("PA",), cofinding_rule="pneumonia-wins"):
    """Rows of the 3-class problem as a tidy frame (image, patient, age, sex, disease) and the exclusion counts."""
    bad_views = sorted(set(views) - set(FRONTAL_VIEWS))
    if bad_views or not views:
        raise DataError(f"views must be a non-empty subset of {FRONTAL_VIEWS}, got {list(views)}")
    if cofinding_rule not in COFINDING_RULES:
        raise DataError(f"unknown co-finding rule {cofinding_rule!r}; choose one of {COFINDING_RULES}")

    findings = [_parse_findings(text, csv_path, row) for row, text in zip(table.index, table["Finding Labels"])]
    effusion = np.array(["Effusion" in f for f in findings])
    pneumonia = np.array(["Pneumonia" in f for f in findings])
    no_finding = np.array([f == {NO_FINDING} for f in findings])
    disease = disease_from_findings(effusion, pneumonia, no_finding, cofinding_rule)

    view = table["View Position"].astype(str).str.strip().str.upper()
    in_view = view.isin(views).to_numpy()
    in_classes = disease >= 0
    exclusions = {
        "other_view": int((~in_view).sum()),
        "other_findings_only": int((in_view & ~in_classes & ~(effusion & pneumonia)).sum()),
        "effusion_and_pneumonia": int((in_view & ~in_classes & effusion & pneumonia).sum()),
    }
    keep = in_view & in_classes
    selected = table.loc[keep]
    age = np.array([_parse_age(v, csv_path, row) for row, v in zip(selected.index, selected["Patient Age"])])
    plausible = (age >= AGE_RANGE[0]) & (age <= AGE_RANGE[1])
    exclusions["implausible_age"] = int((~plausible).sum())
    sex = np.array([_parse_sex(v, csv_path, row) for row, v in zip(selected.index, selected["Patient Gender"])])
    frame = pd.DataFrame(
        {
            "image": selected["Image Index"].astype(str).str.strip().to_numpy(),
            "patient": selected["Patient ID"].astype(str).str.strip().to_numpy(),
            "age": age,
            "sex": sex,
            "disease": disease[keep],
            "view": view.to_numpy()[keep],
        }
    ).loc[plausible]
    if frame.empty:
        raise DataError(f"{csv_path}: no images left after selecting views {list(views)} and the 3 classes")
    return frame.reset_index(drop=True), exclusions


def load_nih_splits(
    root,
    resolution,
    views=("PA",),
    seed=0,
    fractions=(0.8, 0.1, 0.1),
    cofinding_rule="pneumonia-wins",
    csv_path=None,
    progress=None,
):
    """Patient-level train/valid/test splits of NIH ChestX-ray8/14 at `resolution` px.

    `progress(done, total)` is called while images are read. Raises DataError naming the file (and CSV row).
    """
    root = Path(root)
    csv_path = Path(csv_path) if csv_path else find_nih_csv(root)
    frame, exclusions = select_nih(read_nih_table(csv_path), csv_path, tuple(views), cofinding_rule)
    locate = _image_locator(root)
    images = torch.empty(len(frame), 1, resolution, resolution, dtype=torch.float32)
    for i, name in enumerate(frame["image"]):
        images[i] = load_image(locate(name), resolution)
        if progress:
            progress(i + 1, len(frame))
    pa = parents_from_frame(frame, CHESTXRAY8_GRAPH)
    info = {
        "source": "nih",
        "csv": str(csv_path),
        "views": list(views),
        "cofinding_rule": cofinding_rule,
        "excluded": exclusions,
        # per image, for the screening of study stimuli (generator.data.screening)
        "view_positions": dict(zip(frame["image"], frame["view"])),
    }
    dataset = CXRDataset(images, pa, CHESTXRAY8_GRAPH, frame["image"].tolist(), resolution, info=info)
    return split_dataset(dataset, frame["patient"].to_numpy(), fractions, seed)


def _parse_findings(text, csv_path, row):
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{csv_path}, row {row + 2}: empty 'Finding Labels'")
    findings = {part.strip() for part in text.split("|")}
    unknown = findings - set(NIH_FINDINGS) - {NO_FINDING}
    if unknown:
        raise DataError(f"{csv_path}, row {row + 2}: finding(s) {sorted(unknown)} are not NIH labels")
    if NO_FINDING in findings and len(findings) > 1:
        raise DataError(f"{csv_path}, row {row + 2}: 'No Finding' together with findings {text!r}")
    return findings


def _parse_age(value, csv_path, row):
    """Ages are integers in the v2020 file and '058Y'-style strings in some copies of the 2017 file."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[Yy]?\s*", str(value))
    if not match:
        raise DataError(f"{csv_path}, row {row + 2}: 'Patient Age' {value!r} is not an age in years")
    return float(match.group(1))


def _parse_sex(value, csv_path, row):
    sex = str(value).strip().upper()
    if sex not in ("M", "F"):
        raise DataError(f"{csv_path}, row {row + 2}: 'Patient Gender' must be M or F, got {value!r}")
    return 1.0 if sex == "M" else 0.0


def _image_locator(root):
    """Find an image by name under ROOT/images/ or, for the full release, ROOT/images_*/images/."""
    flat = root / "images"
    nested = None

    def locate(name):
        nonlocal nested
        path = flat / name
        if path.exists():
            return path
        if nested is None:
            nested = {p.name: p for p in root.glob("images_*/images/*")}
        if name in nested:
            return nested[name]
        raise DataError(f"{path}: image listed in the label file is missing")

    return locate
