"""How fast are phantom chest X-rays made, and what do they contain?

Renders N phantom images (default 10,000 at 64 px) from one seed and prints images per second (wall and CPU time),
the class balance, and the share of the image that each lesion covers. The target is 10,000 images at 64 px in under
a minute on 2 cores.

    .venv/bin/python benchmarks/bench_phantom.py [--n 10000] [--resolution 64] [--seed 0]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.data import DISEASE_CLASSES, make_phantom  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--graph", default="mimic")
    args = parser.parse_args()

    wall, cpu = time.perf_counter(), time.process_time()
    dataset = make_phantom(args.n, args.resolution, args.seed, args.graph)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"== phantom ({args.graph} graph): {args.n} images at {args.resolution} px")
    print(f"  wall {wall:.1f} s ({args.n / wall:.0f} images/s), CPU {cpu:.1f} s, target < 60 s for 10k at 64 px")
    counts = dataset.label_counts()
    print("  classes: " + ", ".join(f"{k} {v} ({v / args.n:.0%})" for k, v in counts.items()))
    for name in ("effusion", "pneumonia"):
        area = dataset.lesion_masks[name].float().mean(dim=(1, 2, 3))
        q = torch.quantile(area, torch.tensor([0.05, 0.5, 0.95])).tolist()
        print(f"  {name} mask area: 5% {q[0]:.1%}, median {q[1]:.1%}, 95% {q[2]:.1%} of the image")
    disease = dataset.pa["disease"]
    for label, name in enumerate(DISEASE_CLASSES):
        if (disease == label).any():
            print(f"  mean pixel ({name}): {dataset.x[disease == label].mean():+.3f}")


if __name__ == "__main__":
    main()
