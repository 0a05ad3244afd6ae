"""Contact sheets of phantom samples beside their true counterfactuals, one PNG per disease class, for people to look
at: each row is one sample; the columns are the factual image, its true counterfactual under do(disease := k) for
every class k, and the factual image with the lesion masks drawn in (effusion red, pneumonia blue)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .graph import DISEASE_CLASSES, GRAPHS
from .phantom import PhantomSCM
from .transforms import to_uint8

MIN_TILE = 128
HEADER = 18
GAP = 4


def write_phantom_contact_sheets(out_dir, n_per_class=6, resolution=128, seed=0, graph_name="mimic"):
    """Write `phantom-<class>.png` for every disease class into out_dir; returns the paths."""
    if graph_name not in GRAPHS:
        raise ValueError(f"unknown phantom graph {graph_name!r}; choose one of {sorted(GRAPHS)}")
    if n_per_class < 1:
        raise ValueError("n_per_class must be at least 1")
    scm = PhantomSCM(GRAPHS[graph_name])
    pa, u = scm.sample(max(40, 12 * n_per_class), np.random.default_rng(seed))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, name in enumerate(DISEASE_CLASSES):
        index = torch.nonzero(pa["disease"] == label).flatten()[:n_per_class]
        rows_pa, rows_u = {k: v[index] for k, v in pa.items()}, u[index]
        factual, masks = scm.render(rows_pa, rows_u, resolution)
        counterfactuals = [
            scm.true_counterfactual(rows_pa, rows_u, {"disease": target}, resolution)[0]
            for target in range(len(DISEASE_CLASSES))
        ]
        columns = [("factual", _grey(factual))]
        columns += [(f"do({target})", _grey(x)) for target, x in zip(DISEASE_CLASSES, counterfactuals)]
        columns.append(("lesion masks", _overlay(factual, masks)))
        path = out_dir / f"phantom-{name}.png"
        _sheet(columns, f"{name}: samples and true counterfactuals", resolution).save(path)
        paths.append(path)
    return paths


def _grey(x):
    grey = to_uint8(x[:, 0])
    return np.repeat(grey[..., None], 3, axis=-1)


def _overlay(x, masks):
    rgb = _grey(x).astype(np.float32)
    for name, colour in (("effusion", (255, 40, 40)), ("pneumonia", (40, 120, 255))):
        mask = masks[name][:, 0].numpy()[..., None]
        rgb = np.where(mask, 0.55 * rgb + 0.45 * np.array(colour, dtype=np.float32), rgb)
    return rgb.astype(np.uint8)


def _sheet(columns, title, resolution):
    tile = max(resolution, MIN_TILE)
    rows = len(columns[0][1])
    width = len(columns) * (tile + GAP) + GAP
    height = 2 * HEADER + rows * (tile + GAP) + GAP
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 3), title, fill=(230, 230, 230))
    for c, (caption, images) in enumerate(columns):
        left = GAP + c * (tile + GAP)
        draw.text((left, HEADER + 3), caption, fill=(200, 200, 200))
        for r, image in enumerate(images):
            picture = Image.fromarray(image).resize((tile, tile), Image.NEAREST)
            sheet.paste(picture, (left, 2 * HEADER + GAP + r * (tile + GAP)))
    return sheet
