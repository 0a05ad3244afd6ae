"""Run every benchmark in this folder (bench_*.py) and print their figures under a description of the machine.

Each benchmark is a script that prints its own figures; run one alone with `python benchmarks/bench_x.py`.
Set BENCH_ONLY=phantom,training to choose some.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def describe_machine():
    import torch

    lines = [
        f"python {platform.python_version()} on {platform.platform()}",
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda: "
        + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        f"jemalloc preloaded: {'jemalloc' in os.environ.get('LD_PRELOAD', '')}",
    ]
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
        lines.append(f"memory: {int(meminfo[1]) / 1024**2:.1f} GiB")
    except OSError:
        pass
    return lines


def main():
    only = {name.strip() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()}
    print("== machine")
    for line in describe_machine():
        print("  " + line)
    failures = 0
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"\n== {name}", flush=True)
        result = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        failures += result.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
