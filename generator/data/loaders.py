"""One entry point for every kind of data set: `load_splits(kind, root, resolution, options)`.

It sits above the data-set modules (datasets, nih, mimic), which never import it, so the loaders form no cycle.
"""

from .datasets import DataError, make_phantom_splits
from .mimic import load_mimic_splits
from .nih import load_nih_splits

DATASET_KINDS = ("phantom", "phantom-cxr8", "nih", "mimic")


def load_splits(kind, root, resolution, options=None, progress=None):
    """Load {"train", "valid", "test"} for a data set kind.

    phantom / phantom-cxr8: root is a cache folder (may be empty); options: n (default 10000), seed, fractions.
    nih: options as `load_nih_splits`; mimic: options as `load_mimic_splits`. `progress(done, total)` is called
    while real images are read.
    """
    options = dict(options or {})
    if kind in ("phantom", "phantom-cxr8"):
        unknown = set(options) - {"n", "seed", "fractions"}
        if unknown:
            raise DataError(f"unknown phantom options {sorted(unknown)}")
        return make_phantom_splits(
            n=options.get("n", 10000),
            resolution=resolution,
            seed=options.get("seed", 0),
            graph_name="mimic" if kind == "phantom" else "chestxray8",
            fractions=tuple(options.get("fractions", (0.8, 0.1, 0.1))),
            cache_dir=root or None,
        )
    if kind == "nih":
        return load_nih_splits(root, resolution, progress=progress, **_loader_options(options))
    if kind == "mimic":
        return load_mimic_splits(root, resolution, progress=progress, **_loader_options(options))
    raise DataError(f"unknown data set kind {kind!r}; choose one of {DATASET_KINDS}")


def locate_images(splits):
    """{image id as text: (split name, row)} over loaded splits, in their order; an id in two splits is the first's."""
    where = {}
    for name, split in splits.items():
        for row, image_id in enumerate(split.ids):
            where.setdefault(str(image_id), (name, row))
    return where


def _loader_options(options):
    options = dict(options)
    for name in ("views", "fractions"):
        if name in options:
            options[name] = tuple(options[name])
    return options
