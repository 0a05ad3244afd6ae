"""Framework-free data package: the causal graphs, the phantom SCM, and the NIH / MIMIC loaders."""

from .datasets import (
    COFINDING_RULES,
    SPLITS,
    CXRDataset,
    DataError,
    disease_from_findings,
    make_phantom,
    make_phantom_splits,
    patient_level_split,
)
from .graph import CHESTXRAY8_GRAPH, DISEASE_CLASSES, GRAPHS, MIMIC_GRAPH, CausalGraph, Node
from .loaders import DATASET_KINDS, load_splits, locate_images
from .mimic import load_mimic_splits
from .nih import load_nih_splits
from .phantom import Exogenous, PhantomSCM

__all__ = [
    "CHESTXRAY8_GRAPH",
    "COFINDING_RULES",
    "DATASET_KINDS",
    "DISEASE_CLASSES",
    "GRAPHS",
    "MIMIC_GRAPH",
    "SPLITS",
    "CXRDataset",
    "CausalGraph",
    "DataError",
    "Exogenous",
    "Node",
    "PhantomSCM",
    "disease_from_findings",
    "load_mimic_splits",
    "load_nih_splits",
    "load_splits",
    "locate_images",
    "make_phantom",
    "make_phantom_splits",
    "patient_level_split",
]
