"""Counterfactual latency per image (abduction + action + prediction) and peak memory, for cpu-64 and paper-192.

Each preset is measured in its own child process so that its peak resident memory is its own. Latency does not
depend on the weights, so an untrained model of the preset's architecture is timed on random images: one image at a
time (what generating a study's stimuli does per case) and in a batch. Training throughput is in bench_training.py.

    .venv/bin/python benchmarks/bench_generator.py              # cpu-64 and paper-192, a few repeats
    BENCH_CF_REPEATS=20 BENCH_CF_BATCH=16 .venv/bin/python benchmarks/bench_generator.py
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = os.environ.get("BENCH_CF_PRESETS", "cpu-64,paper-192").split(",")
REPEATS = int(os.environ.get("BENCH_CF_REPEATS", "5"))
BATCH = int(os.environ.get("BENCH_CF_BATCH", "8"))
# do(disease) reruns only the lesion branch and keeps the other parents as observed (no spline inversion)
TARGET_MS = {"cpu-64": 20}


def measure(preset_name):
    import torch

    sys.path.insert(0, str(ROOT))
    from generator.causal.counterfactual import CounterfactualModel
    from generator.data.graph import MIMIC_GRAPH
    from generator.training.presets import get_preset
    from generator.training.trainer import choose_device

    device = choose_device()
    preset = get_preset(preset_name)
    torch.manual_seed(0)

    def batch(n):
        pa = {
            "age": 18 + 72 * torch.rand(n),
            "sex": torch.randint(0, 2, (n,)).float(),
            "race": torch.randint(0, 3, (n,)),
            "wcc": 2 + 23 * torch.rand(n),
            "disease": torch.randint(1, 3, (n,)),
        }
        x = torch.rand(n, 1, preset.resolution, preset.resolution) * 2 - 1
        return x.to(device), {k: v.to(device) for k, v in pa.items()}

    model = CounterfactualModel(MIMIC_GRAPH, preset)
    model.parent_model.fit_standardisation(batch(256)[1])
    model = model.to(device).eval()
    do_healthy = {"disease": torch.tensor(0)}

    def one_round(n):
        x, pa = batch(n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.no_grad():
            model.counterfactual(x, pa, {"disease": do_healthy["disease"].expand(n).to(device)})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    one_round(1)  # warm-up: first call allocates and picks kernels
    single = sorted(one_round(1) for _ in range(REPEATS))
    batched = sorted(one_round(BATCH) for _ in range(max(2, REPEATS // 2)))
    result = {
        "preset": preset_name,
        "resolution": preset.resolution,
        "parameters": sum(p.numel() for p in model.hvae.parameters()),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "single_image_ms_median": 1000 * single[len(single) // 2],
        "single_image_ms_min": 1000 * single[0],
        "batch": BATCH,
        "batched_ms_per_image": 1000 * batched[len(batched) // 2] / BATCH,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average": os.getloadavg()[0],
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 1024**2
    return result


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2])))
        return 0
    print(f"counterfactual latency (abduction + do(disease=healthy) + prediction), {REPEATS} repeats, batch {BATCH}")
    failures = 0
    for preset in PRESETS:
        child = subprocess.run(
            [sys.executable, __file__, "--child", preset], cwd=ROOT, capture_output=True, text=True, timeout=1800
        )
        if child.returncode != 0:
            failures += 1
            print(f"  {preset}: FAILED\n{child.stderr[-2000:]}")
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        line = (
            f"  {r['preset']:<10} {r['resolution']}px {r['parameters'] / 1e6:.2f}M params on {r['device']} "
            f"({r['threads']} threads): one image {r['single_image_ms_median']:.0f} ms "
            f"(min {r['single_image_ms_min']:.0f}), "
            f"batched {r['batched_ms_per_image']:.0f} ms/image, peak RSS {r['peak_rss_mib']:.0f} MiB"
        )
        if "peak_cuda_mib" in r:
            line += f", peak CUDA {r['peak_cuda_mib']:.0f} MiB"
        line += f"; load {r['load_average']:.1f}"
        if r["preset"] in TARGET_MS:
            line += f" (target {TARGET_MS[r['preset']]} ms at batch 1 on one quiet core; 42-69 ms before)"
        print(line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
