"""Does the trained generator really change the disease? A check against the phantom's TRUE counterfactuals.

Trains `cpu-64` (or another preset) on phantom chest X-rays, then on held-out images:

- removal do(disease := healthy) on diseased images: mean L1 to the true counterfactual, against the "no change"
  answer (the factual image itself);
- for every intervention: the share of the change |x_cf - x| that falls inside the region the true counterfactual
  changes (a shortcut spot elsewhere scores low);
- agreement of an evaluation classifier, trained here on the real training images and never used in training the
  generator, with the intervened disease.

Both the ELBO-only model (hvae.pt) and the counterfactually trained one (counterfactual.pt) are scored, and a contact
sheet is written next to the checkpoints.

    .venv/bin/python benchmarks/phantom_cf_check.py --budget 900 --n-train 6000 --out var/runs/phantom-check

Without `--steps` the run follows the preset's step plan and the budget only caps it, as on the platform (a stage
cut below half its plan marks the run under-trained); `--fill-budget` instead plans far more steps than the budget
allows, so every stage trains for its whole share (the figures of the earlier budget tables); `--steps` fixes the
steps and drops the budget (comparisons on a shared machine then train the same amount whatever the load).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.functional import gaussian_blur

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.data.datasets import CXRDataset  # noqa: E402
from generator.data.graph import DISEASE_CLASSES, MIMIC_GRAPH  # noqa: E402
from generator.data.phantom import PhantomSCM  # noqa: E402
from generator.training.pipeline import RunConfig, load_model  # noqa: E402
from generator.training.presets import get_preset  # noqa: E402
from generator.training.variants import train_variant  # noqa: E402


def phantom_split(scm, n, resolution, seed):
    pa, u = scm.sample(n, np.random.default_rng(seed))
    x, masks = scm.render(pa, u, resolution)
    ids = [f"phantom-{seed}-{i}" for i in range(n)]
    # with `scm` the run chooses its final checkpoint against the phantom's truth (generator.training.selection)
    return CXRDataset(x, pa, scm.graph, ids, resolution, u=u, lesion_masks=masks, scm=scm)


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


def localisation(change, region):
    """Per image, the share of the total change |x_cf - x| that lies inside `region`."""
    return (change * region).flatten(1).sum(1) / change.flatten(1).sum(1).clamp(min=1e-8)


def batched_counterfactual(model, x, pa, do, batch=100, seed=0, samples=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            model.counterfactual(
                x[s : s + batch],
                {k: v[s : s + batch] for k, v in pa.items()},
                do,
                samples=samples,
                generator=generator,
            ).x_cf
            for s in range(0, len(x), batch)
        ]
    )


@torch.no_grad()
def score(model, scm, test, classifier, resolution, per_case=300):
    """Removals (do(healthy) on diseased images), additions (do(lesion) on healthy images) and swaps between the two
    lesions, each judged against the phantom's truth."""
    results = {}
    disease = test.pa["disease"]
    cases = [(f"removal do(healthy) from {DISEASE_CLASSES[s]}", s, 0) for s in (1, 2)]
    cases += [(f"addition do({DISEASE_CLASSES[t]})", 0, t) for t in (1, 2)]
    cases += [(f"swap do({DISEASE_CLASSES[t]}) from {DISEASE_CLASSES[3 - t]}", 3 - t, t) for t in (1, 2)]
    for name, source, target in cases:
        index = torch.nonzero(disease == source).flatten()[:per_case]
        pa = {k: v[index] for k, v in test.pa.items()}
        x, u = test.x[index], test.u[index]
        x_cf = batched_counterfactual(model, x, pa, {"disease": target}, seed=target)
        true_cf, pa_cf, _ = scm.true_counterfactual(pa, u, {"disease": target}, resolution)
        region = scm.change_region(pa, u, pa_cf, resolution)
        if source == 0 or (target != 0 and source != 0):  # an added lesion may lie anywhere in its plausible zone
            zone = scm.plausible_zone(pa, u, target, resolution, draws=48, rng=1)
            region = region | zone
        change = (x_cf - x).abs()
        entry = {
            "n": len(index),
            "l1_to_true_cf": (x_cf - true_cf).abs().mean().item(),
            "l1_no_change": (x - true_cf).abs().mean().item(),
            "l1_to_true_cf_in_region": ((x_cf - true_cf).abs() * region).sum().item()
            / region.sum().clamp(min=1).item(),
            "l1_no_change_in_region": ((x - true_cf).abs() * region).sum().item() / region.sum().clamp(min=1).item(),
            "localisation": localisation(change, region).mean().item(),
            "mean_abs_change": change.mean().item(),
            "true_mean_abs_change": (true_cf - x).abs().mean().item(),
            "classifier_agreement": (classifier(x_cf).argmax(-1) == target).float().mean().item(),
        }
        if target == 0:
            entry.update(texture_split(x_cf, x, true_cf, region))
        results[name] = entry
    return results


def texture_split(x_cf, x, true_cf, region, sigma=1.5):
    """A removal's error to the true counterfactual inside the change region, split into a low-pass part (Gaussian
    blur, `sigma` pixels) and the high-pass rest (the lesion's fine texture that a smooth lesion map cannot take off),
    with the in-region ratio the low-pass error alone would give."""
    region = region.float()

    def in_region(t):
        return ((t.abs() * region).sum() / region.sum().clamp(min=1)).item()

    def low(t):
        return gaussian_blur(t, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)

    error, no_change = x_cf - true_cf, x - true_cf
    return {
        "in_region_error_low_pass": in_region(low(error)),
        "in_region_error_high_pass": in_region(error - low(error)),
        "in_region_no_change_high_pass": in_region(no_change - low(no_change)),
        "in_region_ratio_if_texture_exact": in_region(low(error)) / max(in_region(no_change), 1e-12),
    }


def headline(results):
    """The issue's targets in one line per checkpoint."""
    removals = [v for k, v in results.items() if k.startswith("removal")]
    ratio = np.mean([r["l1_to_true_cf"] / r["l1_no_change"] for r in removals])
    ratio_region = np.mean([r["l1_to_true_cf_in_region"] / r["l1_no_change_in_region"] for r in removals])
    agreement = {
        "healthy": np.mean([r["classifier_agreement"] for r in removals]),
        "effusion": results["addition do(effusion)"]["classifier_agreement"],
        "pneumonia": results["addition do(pneumonia)"]["classifier_agreement"],
    }
    return {
        "removal_l1_ratio": float(ratio),
        "removal_l1_ratio_in_region": float(ratio_region),
        "removal_l1_ratio_in_region_if_texture_exact": float(
            np.mean([r["in_region_ratio_if_texture_exact"] for r in removals])
        ),
        "min_localisation": float(min(r["localisation"] for r in results.values())),
        "localisation": {k: round(v["localisation"], 3) for k, v in results.items()},
        "agreement": {k: round(float(v), 3) for k, v in agreement.items()},
    }


def contact_sheet(model, test, scm, resolution, path, count=6):
    """Removals: factual, do(healthy), true healthy, change x4, true change x4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = torch.nonzero(test.pa["disease"] != 0).flatten()[:count]
    pa = {k: v[index] for k, v in test.pa.items()}
    x = test.x[index]
    with torch.no_grad():
        removed = model.counterfactual(x, pa, {"disease": 0}).x_cf
    truth = scm.true_counterfactual(pa, test.u[index], {"disease": 0}, resolution)[0]
    rows = [
        ("factual", x, (-1, 1)),
        ("do(healthy)", removed, (-1, 1)),
        ("true healthy", truth, (-1, 1)),
        ("change x4", (removed - x) * 4, (-1, 1)),
        ("true change x4", (truth - x) * 4, (-1, 1)),
    ]
    titles = [DISEASE_CLASSES[int(d)] for d in pa["disease"]]
    draw_sheet(plt, rows, titles, path)


def addition_sheet(model, test, scm, resolution, path, count=4, draws=4):
    """Additions to healthy images: for each lesion, `draws` samples of the model beside the true counterfactual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = torch.nonzero(test.pa["disease"] == 0).flatten()[:count]
    pa = {k: v[index] for k, v in test.pa.items()}
    x = test.x[index]
    rows = [("healthy", x, (-1, 1))]
    with torch.no_grad():
        for target in (1, 2):
            for draw in range(draws):
                generator = torch.Generator().manual_seed(100 * target + draw)
                x_cf = model.counterfactual(x, pa, {"disease": target}, generator=generator).x_cf
                rows.append((f"{DISEASE_CLASSES[target][:4]} draw {draw + 1}", x_cf, (-1, 1)))
            truth = scm.true_counterfactual(pa, test.u[index], {"disease": target}, resolution)[0]
            rows.append((f"true {DISEASE_CLASSES[target][:4]}", truth, (-1, 1)))
    draw_sheet(plt, rows, ["healthy"] * count, path)


def draw_sheet(plt, rows, titles, path):
    count = len(titles)
    fig, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.6 * len(rows)))
    for r, (name, images, (low, high)) in enumerate(rows):
        for c in range(count):
            axes[r, c].imshow(images[c, 0].numpy(), cmap="gray", vmin=low, vmax=high)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(name, fontsize=7)
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    parser.add_argument(
        "--steps",
        default="",
        help="fixed step counts instead of the budget, e.g. hvae=3000,counterfactual=1000 (comparisons on a shared "
        "machine then train the same amount whatever the load)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a preset field for this run (JSON value), e.g. --set lesion_latent=16",
    )
    parser.add_argument(
        "--fill-budget",
        action="store_true",
        help="plan far more ELBO and counterfactual steps than the budget allows, so they train for their whole share",
    )
    parser.add_argument("--score-only", action="store_true", help="score the checkpoints already in --out")
    parser.add_argument(
        "--variant",
        default="baseline",
        choices=("baseline", "expert", "expert-al"),
        help="baseline: the pipeline's stages; expert / expert-al: the proposed model (an expert trained on the "
        "phantom's training split, no pretrained weights) with active-learning rounds for expert-al",
    )
    parser.add_argument("--al-rounds", type=int, default=3, help="active-learning rounds of an expert-al run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.steps:
        steps = {k: int(v) for k, v in (part.split("=") for part in args.steps.split(","))}
        budget = None
    elif args.fill_budget:
        steps, budget = {"hvae": 100000, "counterfactual": 100000}, args.budget
    else:
        steps, budget = {}, args.budget
    config = RunConfig(
        preset=args.preset,
        seed=args.seed,
        time_budget_s=budget,
        steps=steps,
        variant=args.variant,
        al_rounds=args.al_rounds if args.variant == "expert-al" else 0,
    )
    preset = dataclasses.replace(get_preset(args.preset), **overrides)
    resolution = preset.resolution
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

    summary = train_variant(config, preset, splits, out, progress=progress, resume=args.resume or args.score_only)
    training_seconds = time.time() - started
    classifier = evaluation_classifier(splits["train"])
    with torch.no_grad():
        classifier_accuracy = (classifier(test.x).argmax(-1) == test.pa["disease"]).float().mean().item()
    report = {
        "training_seconds": training_seconds,
        "stages": {k: {m: v for m, v in metrics.items() if m != "history"} for k, metrics in summary["stages"].items()},
        "overrides": overrides,
        "variant": args.variant,
        "final_checkpoint": Path(summary["checkpoint"]).name,
        "selection": summary.get("selection"),
        "under_trained": summary.get("under_trained"),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "machine": summary.get("machine"),
        "evaluation_classifier_accuracy_on_real": classifier_accuracy,
    }
    # the ELBO and counterfactual stages, and the model the run ends with when it is neither (an active-learning round)
    scored = {"hvae": out / "hvae.pt", "counterfactual": out / "counterfactual.pt"}
    if Path(summary["checkpoint"]).name not in ("hvae.pt", "counterfactual.pt"):
        scored["final"] = Path(summary["checkpoint"])
    for stage, path in scored.items():
        model = load_model(path, device="cpu")
        report[f"after_{stage}"] = score(model, scm, test, classifier, resolution)
        report[f"headline_{stage}"] = headline(report[f"after_{stage}"])
        contact_sheet(model, test, scm, resolution, out / f"contact_sheet_{stage}.png")
        addition_sheet(model, test, scm, resolution, out / f"additions_{stage}.png")
    (out / "phantom_check.json").write_text(json.dumps(report, indent=2, default=str))
    shown = ("stages", "selection", "under_trained")
    print(json.dumps({k: v for k, v in report.items() if k.startswith("headline") or k in shown}, indent=2))


if __name__ == "__main__":
    main()
