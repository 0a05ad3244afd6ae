"""In-memory chest X-ray data sets with their causal parents, and phantom splits.

Every data set, phantom or real, is a `CXRDataset`: images as float32 [N, 1, H, W] in [-1, 1] and the parents as
name -> Tensor[N] (continuous in raw units, binary 0/1 float, categorical int64), described by a `CausalGraph`.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .graph import BINARY, CATEGORICAL, DISEASE_CLASSES, GRAPHS, CausalGraph
from .phantom import Exogenous, PhantomSCM

SPLITS = ("train", "valid", "test")
COFINDING_RULES = ("pneumonia-wins", "effusion-wins", "exclude")
PHANTOM_CACHE_VERSION = 1


class DataError(ValueError):
    """Bad input data: the message names the file (and row) at fault."""


def parents_from_frame(frame, graph):
    """The parents of every row of a loader's table as tensors: categorical nodes as int64 indices, the others
    (continuous, binary) as float32, in the graph's order."""
    return {
        node.name: torch.tensor(
            frame[node.name].to_numpy(), dtype=torch.int64 if node.kind == CATEGORICAL else torch.float32
        )
        for node in graph.nodes
    }


class CXRDataset(Dataset):
    """Images and their parents, in memory.

    Phantom data sets also carry `u` (the exogenous noise, indexable per sample), `scm` (the PhantomSCM that can
    render true counterfactuals), `lesion_masks` ({"effusion", "pneumonia"} -> bool [N, 1, H, W]: where each lesion
    is or would be) and `masks` (bool [N, 1, H, W]: the sample's own lesion, or for a healthy sample the union of
    where either lesion would be). `info` holds loader metadata (source files, rules, exclusions).
    """

    def __init__(self, x, pa, graph: CausalGraph, ids, resolution, u=None, lesion_masks=None, scm=None, info=None):
        self.x = x
        self.pa = pa
        self.graph = graph
        self.ids = list(ids)
        self.resolution = int(resolution)
        self.u = u
        self.lesion_masks = lesion_masks
        self.scm = scm
        self.info = dict(info or {})
        n = len(x)
        if x.dim() != 4 or x.shape[1] != 1 or x.dtype != torch.float32:
            raise ValueError(f"images must be float32 [N, 1, H, W], got {x.dtype} {tuple(x.shape)}")
        missing = set(graph.names) - set(pa)
        if missing:
            raise ValueError(f"parents {sorted(missing)} of graph {graph.name!r} are missing")
        lengths = {len(v) for v in pa.values()} | {len(self.ids), n} | ({len(u)} if u is not None else set())
        if len(lengths) != 1:
            raise ValueError(f"images, parents, ids and noise disagree on the number of samples: {sorted(lengths)}")

    @property
    def masks(self):
        if self.lesion_masks is None:
            return None
        disease = self.pa["disease"].view(-1, 1, 1, 1)
        effusion, pneumonia = self.lesion_masks["effusion"], self.lesion_masks["pneumonia"]
        return torch.where(disease == 1, effusion, torch.where(disease == 2, pneumonia, effusion | pneumonia))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {name: value[i] for name, value in self.pa.items()}

    def subset(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return CXRDataset(
            self.x[index],
            {name: value[index] for name, value in self.pa.items()},
            self.graph,
            [self.ids[i] for i in index.tolist()],
            self.resolution,
            u=self.u[index] if self.u is not None else None,
            lesion_masks={k: v[index] for k, v in self.lesion_masks.items()} if self.lesion_masks else None,
            scm=self.scm,
            info=self.info,
        )

    def label_counts(self):
        counts = torch.bincount(self.pa["disease"], minlength=len(DISEASE_CLASSES)).tolist()
        return dict(zip(DISEASE_CLASSES, counts))

    def parent_stats(self):
        """Summary of every parent: mean/std/min/max for continuous nodes, counts per category otherwise."""
        stats = {}
        for node in self.graph.nodes:
            values = self.pa[node.name]
            if node.kind in (BINARY, CATEGORICAL):
                counts = torch.bincount(values.to(torch.int64), minlength=node.cardinality).tolist()
                stats[node.name] = {"kind": node.kind, "counts": dict(zip(node.categories, counts))}
            else:
                values = values.to(torch.float64)
                stats[node.name] = {
                    "kind": node.kind,
                    "mean": round(values.mean().item(), 4) if len(values) else None,
                    "std": round(values.std().item(), 4) if len(values) > 1 else None,
                    "min": round(values.min().item(), 4) if len(values) else None,
                    "max": round(values.max().item(), 4) if len(values) else None,
                    "unit": node.unit,
                }
        return stats


# ------------------------------------------------------------------------------------------- shared loader rules
def disease_from_findings(effusion, pneumonia, no_finding, cofinding_rule="pneumonia-wins"):
    """The paper's 3-class label from boolean finding arrays; -1 marks a sample to exclude.

    No finding -> 0, effusion -> 1, pneumonia -> 2, other findings only -> excluded. With both effusion and pneumonia
    the rule decides: "pneumonia-wins" (default: the infection is what the study asks about), "effusion-wins", or
    "exclude".
    """
    if cofinding_rule not in COFINDING_RULES:
        raise DataError(f"unknown co-finding rule {cofinding_rule!r}; choose one of {COFINDING_RULES}")
    effusion, pneumonia, no_finding = (np.asarray(a, dtype=bool) for a in (effusion, pneumonia, no_finding))
    labels = np.full(len(effusion), -1, dtype=np.int64)
    labels[no_finding & ~effusion & ~pneumonia] = 0
    labels[effusion & ~pneumonia] = 1
    labels[pneumonia & ~effusion] = 2
    both = effusion & pneumonia
    if cofinding_rule == "pneumonia-wins":
        labels[both] = 2
    elif cofinding_rule == "effusion-wins":
        labels[both] = 1
    return labels


def patient_level_split(patient_ids, fractions=(0.8, 0.1, 0.1), seed=0):
    """Split sample indices so that no patient appears in two splits: returns {"train": idx, ...} (numpy)."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    patient_ids = np.asarray([str(p) for p in patient_ids])
    patients = np.unique(patient_ids)
    order = np.random.default_rng(seed).permutation(len(patients))
    cut_train = int(round(fractions[0] * len(patients)))
    cut_valid = cut_train + int(round(fractions[1] * len(patients)))
    groups = {
        "train": patients[order[:cut_train]],
        "valid": patients[order[cut_train:cut_valid]],
        "test": patients[order[cut_valid:]],
    }
    return {name: np.flatnonzero(np.isin(patient_ids, members)) for name, members in groups.items()}


def split_dataset(dataset, patient_ids, fractions, seed):
    indices = patient_level_split(patient_ids, fractions, seed)
    return {name: dataset.subset(indices[name]) for name in SPLITS}


# ------------------------------------------------------------------------------------------------ phantom splits
def make_phantom(n, resolution, seed, graph_name="mimic"):
    """One phantom data set of n samples, fully determined by (n, resolution, seed, graph)."""
    if graph_name not in GRAPHS:
        raise DataError(f"unknown phantom graph {graph_name!r}; choose one of {sorted(GRAPHS)}")
    if int(n) < 1:
        raise DataError(f"a phantom data set needs at least one image, got n={n}")
    scm = PhantomSCM(GRAPHS[graph_name])
    pa, u = scm.sample(int(n), np.random.default_rng(seed))
    x, lesion_masks = scm.render(pa, u, resolution)
    ids = [f"phantom-{graph_name}-{seed}-{i:06d}" for i in range(int(n))]
    info = {"source": "phantom", "graph": graph_name, "n": int(n), "seed": seed, "view": "PA"}
    return CXRDataset(x, pa, scm.graph, ids, resolution, u=u, lesion_masks=lesion_masks, scm=scm, info=info)


def make_phantom_splits(n, resolution, seed, graph_name="mimic", fractions=(0.8, 0.1, 0.1), cache_dir=None):
    """Phantom train/valid/test splits; each phantom patient has one image, so a random split is patient-level.

    With `cache_dir`, the rendered data set is stored there (one .pt file per configuration) and reused.
    """
    key = {"n": int(n), "resolution": int(resolution), "seed": seed, "graph": graph_name, "v": PHANTOM_CACHE_VERSION}
    cache_file = None
    if cache_dir:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        cache_file = Path(cache_dir) / f"phantom-{graph_name}-{n}-{resolution}px-seed{seed}-{digest}.pt"
    if cache_file is not None and cache_file.exists():
        dataset = _load_phantom_cache(cache_file, graph_name)
    else:
        dataset = make_phantom(n, resolution, seed, graph_name)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "x": dataset.x,
                    "pa": dataset.pa,
                    "u": dataset.u.state_dict(),
                    "masks": dataset.lesion_masks,
                    "ids": dataset.ids,
                    "info": dataset.info,
                    "resolution": dataset.resolution,
                },
                cache_file,
            )
    return split_dataset(dataset, dataset.ids, fractions, seed)


def _load_phantom_cache(cache_file, graph_name):
    try:
        data = torch.load(cache_file, weights_only=True)
    except Exception as error:
        raise DataError(f"{cache_file}: unreadable phantom cache ({error}); delete it to re-render") from error
    scm = PhantomSCM(GRAPHS[graph_name])
    return CXRDataset(
        data["x"],
        data["pa"],
        scm.graph,
        data["ids"],
        data["resolution"],
        u=Exogenous(data["u"]),
        lesion_masks=data["masks"],
        scm=scm,
        info={"view": "PA", **data["info"]},  # every phantom is a frontal (PA) film
    )
