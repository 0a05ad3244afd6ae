"""Counterfactual images of real radiographs, written as PNG files with a manifest that traces every item.

The images come from a loaded data set (`images_from_splits`: their parents are the recorded ones) or from files
(`images_from_files`: read exactly as the training loaders read them, parents predicted by the run's anti-causal
predictors). `produce_counterfactuals` then draws image i under seed `seed + i`, so any item can be reproduced on
its own, and writes `manifest.json` beside the images.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image

from generator.causal.intervention import Intervention
from generator.data.loaders import locate_images
from generator.data.transforms import load_image, to_uint8

# The expert's probabilities recorded per counterfactual, before and after the intervention.
EXPERT_PROBABILITY_NAMES = ("Effusion", "Pneumonia", "No Finding")


@dataclass
class SourceImages:
    """Real images to make counterfactuals of: x [N, 1, H, W] in [-1, 1], parents {name: Tensor[N]}, and per image
    a record of where it came from (source_id, source_image, parents_source) for the manifest."""

    x: torch.Tensor
    pa: dict
    sources: list


def images_from_splits(splits, ids, root):
    """The data-set images with these ids (searched in every split) with their recorded parents."""
    where = locate_images(splits)
    missing = [str(i) for i in ids if str(i) not in where]
    if missing:
        raise ValueError(f"no image with id {', '.join(missing[:5])}")
    chosen = [(splits[name], row) for name, row in (where[str(i)] for i in ids)]
    x = torch.stack([split.x[row] for split, row in chosen]).float()
    names = chosen[0][0].graph.names
    pa = {name: torch.stack([torch.as_tensor(split.pa[name][row]) for split, row in chosen]) for name in names}
    sources = [{"source_id": str(i), "source_image": f"{root}#{i}", "parents_source": "data set"} for i in ids]
    return SourceImages(x, pa, sources)


def images_from_files(paths, resolution, predictors):
    """Image files read by the training loaders' reader, with parents predicted by `predictors` (the run's own)."""
    x = torch.stack([load_image(path, resolution) for path in paths])
    predicted = predictors.predict(x)
    pa = {}
    for node in predictors.graph.nodes:
        value = predicted[node.name]
        if node.kind == "continuous":
            pa[node.name] = value.float()
        elif node.kind == "binary":
            pa[node.name] = value.argmax(-1).float()
        else:
            pa[node.name] = value.argmax(-1)
    sources = [
        {"source_id": Path(p).name, "source_image": str(Path(p).resolve()), "parents_source": "predicted"}
        for p in paths
    ]
    return SourceImages(x, pa, sources)


def to_png(x, path):
    """Write one image in [-1, 1] ([1, H, W] or [H, W]) as an 8-bit grayscale PNG."""
    Image.fromarray(to_uint8(x.detach().float().squeeze()), mode="L").save(path, format="PNG")


def file_stem(source_id, intervention):
    """`<image name>_do-<intervention>`, safe as a file name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(str(source_id)).stem).strip("_") or "image"
    return f"{stem}_do-{intervention.label()}"


def readable_parents(graph, pa, row):
    """{parent: value} of one row with category names instead of indices and continuous values rounded."""
    readable = {}
    for node in graph.nodes:
        value = pa[node.name][row]
        value = value.item() if hasattr(value, "item") else value
        if node.kind == "continuous":
            readable[node.name] = round(value, 4) if isinstance(value, float) else value
        else:
            readable[node.name] = node.categories[int(value)]
    return readable


def produce_counterfactuals(
    model, images, interventions, out_dir, *, provenance, samples=1, seed=0, expert=None, progress=None
):
    """Counterfactual i of image i under interventions[i], as PNG files plus manifest.json in `out_dir`.

    `provenance` heads the manifest (run, checkpoint, preset, ...); `expert` (an ExpertModel or None) annotates each
    item with its probabilities before and after. Returns the manifest.
    """
    if len(interventions) != len(images.sources):
        raise ValueError(f"{len(interventions)} interventions for {len(images.sources)} images")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    interventions = [Intervention.parse(model.graph, spec) for spec in interventions]
    device = next(model.parameters()).device
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, used_names = [], set()
    for row, (source, intervention) in enumerate(zip(images.sources, interventions)):
        item_seed = int(seed) + row
        generator = torch.Generator(device=device).manual_seed(item_seed)
        x = images.x[row : row + 1].to(device)
        with torch.no_grad():
            cf = model.counterfactual(
                x,
                {name: value[row : row + 1].to(device) for name, value in images.pa.items()},
                intervention,
                samples=samples,
                generator=generator,
            )
        name = _unused_name(file_stem(source["source_id"], intervention), used_names)
        to_png(cf.x_cf[0], out_dir / name)
        item = {
            "file": name,
            **source,
            "intervention": dict(intervention),
            "seed": item_seed,
            "parents": readable_parents(model.graph, images.pa, row),
            "counterfactual_parents": readable_parents(model.graph, {k: v.cpu() for k, v in cf.pa_cf.items()}, 0),
            "expert_probabilities": None,
            "expert_probabilities_source": None,
        }
        if expert is not None:
            with torch.no_grad():
                after = expert.probabilities(cf.x_cf.clamp(-1, 1))
                before = expert.probabilities(x)
            item["expert_probabilities"] = {k: round(float(after[k][0]), 4) for k in EXPERT_PROBABILITY_NAMES}
            item["expert_probabilities_source"] = {k: round(float(before[k][0]), 4) for k in EXPERT_PROBABILITY_NAMES}
        items.append(item)
        if progress is not None:
            progress((row + 1) / len(images.sources), f"{name} ({row + 1}/{len(images.sources)})")
    manifest = {
        **provenance,
        "resolution": model.resolution,
        "samples": samples,
        "created_at": datetime.now(UTC).isoformat(),
        "items": items,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _unused_name(stem, used_names):
    """`stem.png`, or `stem_2.png`, ... when an image is asked for twice under the same intervention."""
    name, copy = f"{stem}.png", 1
    while name in used_names:
        copy += 1
        name = f"{stem}_{copy}.png"
    used_names.add(name)
    return name
