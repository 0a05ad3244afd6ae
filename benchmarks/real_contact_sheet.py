"""Counterfactuals of a trained run on real radiographs, as one contact sheet.

Columns: test images (diseased first, then healthy); rows: factual, do(healthy), two draws each of do(effusion) and
do(pneumonia), and the change of the removal x4. Also prints the mean |x_cf - x| per intervention, so a sheet of
unchanged images cannot pass for a result.

    .venv/bin/python benchmarks/real_contact_sheet.py CHECKPOINT --kind nih --root fixtures/nih-cxr-sample \
        --options '{"views": ["PA", "AP"], "seed": 0, "fractions": [0.5, 0.1, 0.4]}' --out docs/figures/x.png
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.phantom_cf_check import draw_sheet  # noqa: E402
from generator.data.graph import DISEASE_CLASSES  # noqa: E402
from generator.data.loaders import load_splits  # noqa: E402
from generator.training.pipeline import load_model  # noqa: E402


def pick(test, count):
    """`count` test images: the diseased ones first (alternating effusion and pneumonia), then healthy ones."""
    disease = test.pa["disease"]
    groups = [torch.nonzero(disease == d).flatten().tolist() for d in (1, 2, 0)]
    chosen = []
    while len(chosen) < count and any(groups):
        for group in groups:
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return torch.tensor(chosen, dtype=torch.long)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--kind", default="nih")
    parser.add_argument("--root", default="fixtures/nih-cxr-sample")
    parser.add_argument("--options", default="{}", help="data set options (JSON), as registered")
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.checkpoint, device="cpu")
    split = load_splits(args.kind, args.root, model.resolution, json.loads(args.options))[args.split]
    index = pick(split, args.count)
    pa = {k: v[index] for k, v in split.pa.items()}
    x = split.x[index]
    rows = [("factual", x, (-1, 1))]
    changes = {}
    with torch.no_grad():
        removed = model.counterfactual(x, pa, {"disease": 0}).x_cf
        rows.append(("do(healthy)", removed, (-1, 1)))
        disease = pa["disease"]
        # each intervention's change over the images it really changes the label of
        changes["do(healthy)"] = (removed - x)[disease != 0].abs().mean().item()
        for target in (1, 2):
            for draw in range(2):
                generator = torch.Generator().manual_seed(100 * target + draw)
                x_cf = model.counterfactual(x, pa, {"disease": target}, generator=generator).x_cf
                rows.append((f"do({DISEASE_CLASSES[target][:4]}) {draw + 1}", x_cf, (-1, 1)))
                changed = (x_cf - x)[disease != target].abs().mean().item()
                changes[f"do({DISEASE_CLASSES[target]}) draw {draw + 1}"] = changed
        rows.append(("removal x4", (removed - x) * 4, (-1, 1)))
    titles = [DISEASE_CLASSES[int(d)] for d in pa["disease"]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw_sheet(plt, rows, titles, args.out)
    print(json.dumps({"sheet": args.out, "images": titles, "mean_abs_change": changes}, indent=2))


if __name__ == "__main__":
    main()
