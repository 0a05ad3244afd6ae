"""Training throughput of the conditional HVAE (images per second, forward + backward + optimiser step).

Measures the ELBO step (with the latent adversary) and the counterfactual-stage step for each preset on random
data, after a few warm-up steps. paper-192 is expensive on a CPU, so it runs only a handful of steps by default.

    .venv/bin/python benchmarks/bench_training.py --presets cpu-64 paper-192 --steps 10 --paper-steps 2
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.causal.counterfactual import CounterfactualModel  # noqa: E402
from generator.data.graph import MIMIC_GRAPH  # noqa: E402
from generator.training.critics import LatentAdversary  # noqa: E402
from generator.training.presets import get_preset  # noqa: E402
from generator.training.trainer import choose_device  # noqa: E402


def random_batch(n, resolution, device):
    pa = {
        "age": 18 + 72 * torch.rand(n, device=device),
        "sex": torch.randint(0, 2, (n,), device=device).float(),
        "race": torch.randint(0, 3, (n,), device=device),
        "wcc": 2 + 23 * torch.rand(n, device=device),
        "disease": torch.randint(0, 3, (n,), device=device),
    }
    return torch.rand(n, 1, resolution, resolution, device=device) * 2 - 1, pa


def synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(preset_name, steps, warmup, batch_size, device):
    preset = get_preset(preset_name)
    batch_size = batch_size or preset.batch_size
    model = CounterfactualModel(MIMIC_GRAPH, preset).to(device)
    adversary = LatentAdversary(preset, MIMIC_GRAPH).to(device)
    optimizer = torch.optim.AdamW(model.hvae.parameters(), lr=preset.lr, betas=preset.betas)
    x, pa = random_batch(batch_size, preset.resolution, device)

    def elbo_step():
        out = model.hvae.elbo(x, pa)
        (out["free_energy"].mean() + adversary.confusion(out["latents"], pa)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def counterfactual_step():
        out = model.hvae.elbo(x, pa)
        x_cf = model.hvae.predict(out["abduction"], {**pa, "disease": (pa["disease"] + 1) % 3})
        (out["free_energy"].mean() + x_cf.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = {
        "preset": preset_name,
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.hvae.parameters()),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    for name, step in (("elbo", elbo_step), ("counterfactual", counterfactual_step)):
        for _ in range(warmup):
            step()
        synchronise(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronise(device)
        seconds = time.perf_counter() - started
        result[f"{name}_images_per_second"] = steps * batch_size / seconds
        result[f"{name}_seconds_per_step"] = seconds / steps
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["cpu-64", "paper-192"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--paper-steps", type=int, default=2, help="timed steps for paper-192 (slow on CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the preset's batch size")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device()
    results = []
    for name in args.presets:
        steps = args.paper_steps if name == "paper-192" else args.steps
        warmup = min(args.warmup, 1) if name == "paper-192" else args.warmup
        results.append(measure(name, steps, warmup, args.batch_size, device))
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
