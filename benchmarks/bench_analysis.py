"""Analysis time for a large study: the answers of 1,000 simulated participants (60,000 answers in the paired Block-1
design, 36,000 in the counterbalanced one), made directly as the tidy export table by analysis/simulate.py, analysed by
`manage.py run_analysis --from-csv --readers simulated` (every statistic, the JSON/CSV/HTML report and its figures),
once without the mixed-effects models (`--no-models`) and once complete, for each Block-1 design. The counterbalanced
study also fits its two linear mixed models (crossed participant and patient intercepts) in the `--no-models` run, as
they are its confirmatory tests. Each run is a fresh process, so its time includes Django's start-up and the imports.

Targets at 1,000 participants: under 5 s without the models and under 60 s with them. The wall time depends on what
else the machine runs, so the figures also give the processes' CPU time and the load average before each run.

    .venv/bin/python benchmarks/bench_analysis.py
    BENCH_ANALYSIS_PARTICIPANTS=200 BENCH_ANALYSIS_MODELS=0 BENCH_ANALYSIS_DESIGNS=counterbalanced \
        .venv/bin/python benchmarks/bench_analysis.py
"""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTICIPANTS = int(os.environ.get("BENCH_ANALYSIS_PARTICIPANTS", "1000"))
WITH_MODELS = os.environ.get("BENCH_ANALYSIS_MODELS", "1") == "1"
DESIGNS = os.environ.get("BENCH_ANALYSIS_DESIGNS", "paired,counterbalanced").split(",")
TARGETS_S = {"--no-models": 5.0, "complete": 60.0}


def run_analysis(csv_path, out, env, models):
    command = [sys.executable, "manage.py", "run_analysis", "--from-csv", str(csv_path), "--out", str(out)]
    command += ["--readers", "simulated", "--verbosity", "0"] + ([] if models else ["--no-models"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return child, seconds, cpu, load, after.ru_maxrss / 1024


def main():
    from analysis.simulate import Profile, simulate_answers

    folder = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    print(f"analysis: {PARTICIPANTS} simulated participants, {os.cpu_count()} logical cores")
    env = {**os.environ, "VAR_DIR": str(folder), "DJANGO_SETTINGS_MODULE": "studyplatform.settings"}
    failures = 0
    for design in DESIGNS:
        started = time.perf_counter()
        answers = simulate_answers(Profile(), PARTICIPANTS, seed=11, block1_design=design)
        simulated = time.perf_counter() - started
        csv_path = folder / f"answers-{design}.csv"
        answers.to_csv(csv_path, index=False)
        print(
            f"{design} Block 1: {len(answers)} answers "
            f"(simulated in {simulated:.1f} s, CSV {csv_path.stat().st_size / 1024**2:.1f} MiB)"
        )
        for models in (False, True) if WITH_MODELS else (False,):
            name = "complete" if models else "--no-models"
            out = folder / f"out-{design}-{'models' if models else 'no-models'}"
            child, seconds, cpu, load, peak = run_analysis(csv_path, out, env, models)
            if child.returncode != 0:
                print(f"  run_analysis {name} FAILED (exit {child.returncode})\n{child.stderr[-3000:]}")
                failures += 1
                continue
            written = len(list(out.glob("*")))
            verdict = "within" if seconds < TARGETS_S[name] else "OVER"
            print(
                f"  run_analysis {name}: {seconds:.1f} s wall, {cpu:.1f} s CPU (load average {load:.1f} before), "
                f"{verdict} the {TARGETS_S[name]:.0f} s target; peak RSS so far {peak:.0f} MiB, wrote {written} files"
            )
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
