"""Does the trained generator really change the disease? A check against the phantom's TRUE counterfactuals.

Trains `cpu-64` (or another preset) on phantom chest X-rays within a wall-clock budget, then on held-out images:

- removal do(disease := healthy) on diseased images: mean L1 to the true counterfactual, against the "no change"
  answer (the factual image itself);
- for every intervention: the share of the change |x_cf - x| that falls inside the region the true counterfactual
  changes (a shortcut spot elsewhere scores low);
- agreement of an evaluation classifier, trained here on the real training images and never used in training the
  generator, with the intervened disease.

Both the ELBO-only model (hvae.pt) and the counterfactually trained one (counterfactual.pt) are scored, and a contact
sheet is written next to the checkpoints.

    .venv/bin/python benchmarks/phantom_cf_check.py --budget 900 --n-train 6000 --out var/runs/phantom-check
"""

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.data.graph import DISEASE_CLASSES, MIMIC_GRAPH  # noqa: E402
from generator.data.phantom import PhantomSCM  # noqa: E402
from generator.training.pipeline import RunConfig, load_model, train  # noqa: E402


def phantom_split(scm, n, resolution, seed):
    pa, u = scm.sample(n, np.random.default_rng(seed))
    x, masks = scm.render(pa, u, resolution)
    return SimpleNamespace(graph=scm.graph, x=x, pa=pa, u=u, masks=masks, ids=[f"phantom-{seed}-{i}" for i in range(n)])


def evaluation_classifier(train_set, steps=600, seed=123):
    """A plain CNN disease classifier with its own architecture and seed; it plays no part in generator training."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 24, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(24, 48, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(48, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    n = len(train_set.x)
    for _ in range(steps):
        index = torch.randint(0, n, (64,))
        loss = F.cross_entropy(net(train_set.x[index]), train_set.pa["disease"][index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def score(model, scm, test, classifier, resolution, batch=100):
    results = {}
    disease = test.pa["disease"]
    for target, label in enumerate(DISEASE_CLASSES):
        index = torch.nonzero(disease != target).flatten()[:300]
        pa = {k: v[index] for k, v in test.pa.items()}
        x, u = test.x[index], test.u[index]
        x_cf = torch.cat(
            [
                model.counterfactual(
                    x[s : s + batch], {k: v[s : s + batch] for k, v in pa.items()}, {"disease": target}
                ).x_cf
                for s in range(0, len(index), batch)
            ]
        )
        true_cf, pa_cf, _ = scm.true_counterfactual(pa, u, {"disease": target}, resolution)
        region = scm.change_region(pa, u, pa_cf, resolution)
        change = (x_cf - x).abs()
        inside = (change * region).flatten(1).sum(1) / change.flatten(1).sum(1).clamp(min=1e-8)
        agreement = (classifier(x_cf).argmax(-1) == target).float().mean().item()
        entry = {
            "n": len(index),
            "l1_to_true_cf": (x_cf - true_cf).abs().mean().item(),
            "l1_no_change": (x - true_cf).abs().mean().item(),
            "l1_to_true_cf_in_region": ((x_cf - true_cf).abs() * region).sum().item()
            / region.sum().clamp(min=1).item(),
            "l1_no_change_in_region": ((x - true_cf).abs() * region).sum().item() / region.sum().clamp(min=1).item(),
            "change_inside_true_region": inside.mean().item(),
            "mean_abs_change": change.mean().item(),
            "classifier_agreement": agreement,
        }
        results[f"do(disease={label})"] = entry
    return results


def contact_sheet(model, test, scm, resolution, path, count=6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = torch.nonzero(test.pa["disease"] != 0).flatten()[:count]
    pa = {k: v[index] for k, v in test.pa.items()}
    x = test.x[index]
    rows = [("factual", x)]
    with torch.no_grad():
        for target, label in enumerate(DISEASE_CLASSES):
            rows.append((f"do({label})", model.counterfactual(x, pa, {"disease": target}).x_cf))
        rows.append(("true healthy", scm.true_counterfactual(pa, test.u[index], {"disease": 0}, resolution)[0]))
    fig, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.6 * len(rows)))
    for r, (name, images) in enumerate(rows):
        for c in range(count):
            axes[r, c].imshow(images[c, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(name, fontsize=8)
            if r == 0:
                axes[r, c].set_title(DISEASE_CLASSES[int(pa["disease"][c])], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu-64")
    parser.add_argument("--budget", type=float, default=900.0, help="training wall-clock budget in seconds")
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--out", default="var/runs/phantom-check")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = RunConfig(
        preset=args.preset, seed=args.seed, time_budget_s=args.budget, steps={"hvae": 100000, "counterfactual": 100000}
    )
    resolution = config.resolved_preset().resolution
    scm = PhantomSCM(MIMIC_GRAPH)
    splits = {
        "train": phantom_split(scm, args.n_train, resolution, 10 + args.seed),
        "valid": phantom_split(scm, 500, resolution, 20 + args.seed),
    }
    test = phantom_split(scm, args.n_test, resolution, 30 + args.seed)
    out = Path(args.out)
    started = time.time()
    last = {}

    def progress(stage, fraction, message):
        if fraction >= 1.0 or time.time() - last.get(stage, 0) > 30:
            last[stage] = time.time()
            print(f"[{time.time() - started:6.0f}s] {stage} {fraction:.0%} {message}", flush=True)

    summary = train(config, splits, out, progress=progress, resume=args.resume)
    training_seconds = time.time() - started
    classifier = evaluation_classifier(splits["train"])
    with torch.no_grad():
        classifier_accuracy = (classifier(test.x).argmax(-1) == test.pa["disease"]).float().mean().item()
    report = {
        "training_seconds": training_seconds,
        "stages": summary["stages"],
        "evaluation_classifier_accuracy_on_real": classifier_accuracy,
    }
    for stage in ("hvae", "counterfactual"):
        model = load_model(out / f"{stage}.pt", device="cpu")
        report[f"after_{stage}"] = score(model, scm, test, classifier, resolution)
        contact_sheet(model, test, scm, resolution, out / f"contact_sheet_{stage}.png")
    (out / "phantom_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
