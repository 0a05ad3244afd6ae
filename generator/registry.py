"""Registering data sets: load and validate a data set, then record what it contains. Nothing is saved on error."""

from pathlib import Path

from django.core.validators import validate_slug
from django.db import transaction

from generator.data import SPLITS, DataError, load_splits
from generator.models import Dataset

RESOLUTION_RANGE = (32, 256)


def default_dataset_name(kind, resolution, options):
    if kind.startswith("phantom"):
        return f"{kind}-{resolution}px-n{options.get('n', 10000)}-seed{options.get('seed', 0)}"
    return f"{kind}-{resolution}px"


def register_dataset(*, kind, root, resolution=64, name=None, options=None, progress=None):
    """Load the data set `kind` from `root`, check it, and record a Dataset with its split and label counts and
    parent statistics. Raises DataError (naming the file or row at fault) and then records nothing."""
    options = dict(options or {})
    if kind not in Dataset.Kind.values:
        raise DataError(f"unknown data set kind {kind!r}; choose one of {list(Dataset.Kind.values)}")
    if not RESOLUTION_RANGE[0] <= int(resolution) <= RESOLUTION_RANGE[1]:
        raise DataError(
            f"resolution must be between {RESOLUTION_RANGE[0]} and {RESOLUTION_RANGE[1]} px, got {resolution}"
        )
    resolution = int(resolution)
    name = name or default_dataset_name(kind, resolution, options)
    try:
        validate_slug(name)
    except Exception as error:
        raise DataError(f"data set name {name!r} must be a slug (letters, digits, '-', '_')") from error
    if Dataset.objects.filter(name=name).exists():
        raise DataError(f"a data set named {name!r} is already registered; choose another --name")
    root = str(root or "")
    if not kind.startswith("phantom") and not Path(root).is_dir():
        raise DataError(f"{root or '(no root)'}: data set folder not found")

    splits = load_splits(kind, root, resolution, options, progress=progress)
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise DataError(f"{root or kind}: the {split!r} split is empty; add data or change the split fractions")

    label_counts = {split: splits[split].label_counts() for split in SPLITS}
    label_counts["total"] = {
        label: sum(label_counts[split][label] for split in SPLITS) for label in label_counts["train"]
    }
    excluded = splits["train"].info.get("excluded")
    if excluded:
        label_counts["excluded"] = excluded
    with transaction.atomic():
        return Dataset.objects.create(
            name=name,
            kind=kind,
            root=root,
            resolution=resolution,
            options=options,
            graph=splits["train"].graph.to_dict(),
            split_counts={split: len(splits[split]) for split in SPLITS},
            label_counts=label_counts,
            parent_stats={split: splits[split].parent_stats() for split in SPLITS},
        )
