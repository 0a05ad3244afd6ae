"""Analysis time for a large study: the answers of 1,000 simulated participants (60 answers each), made directly as the
tidy export table by analysis/simulate.py, analysed by `manage.py run_analysis --from-csv` (every statistic, the
JSON/CSV/HTML report and its figures).

The mixed-effects models dominate the time at this size (about 8.5 minutes on a shared 2-core machine), so by default
the run uses --no-models; BENCH_ANALYSIS_MODELS=1 times the complete analysis.

    .venv/bin/python benchmarks/bench_analysis.py
    BENCH_ANALYSIS_PARTICIPANTS=200 BENCH_ANALYSIS_MODELS=1 .venv/bin/python benchmarks/bench_analysis.py
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
WITH_MODELS = os.environ.get("BENCH_ANALYSIS_MODELS", "0") == "1"


def main():
    from analysis.simulate import Profile, simulate_answers

    folder = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    started = time.perf_counter()
    answers = simulate_answers(Profile(), PARTICIPANTS, seed=11)
    simulated = time.perf_counter() - started
    csv_path = folder / "answers.csv"
    answers.to_csv(csv_path, index=False)
    print(
        f"analysis: {PARTICIPANTS} simulated participants, {len(answers)} answers "
        f"(simulated in {simulated:.1f} s, CSV {csv_path.stat().st_size / 1024**2:.1f} MiB)"
    )
    command = [sys.executable, "manage.py", "run_analysis", "--from-csv", str(csv_path), "--out", str(folder / "out")]
    if not WITH_MODELS:
        command.append("--no-models")
    env = {**os.environ, "VAR_DIR": str(folder), "DJANGO_SETTINGS_MODULE": "studyplatform.settings"}
    started = time.perf_counter()
    child = subprocess.run(command + ["--verbosity", "0"], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    written = sorted(p.name for p in (folder / "out").glob("*"))
    shutil.rmtree(folder, ignore_errors=True)
    if child.returncode != 0:
        print(f"  run_analysis FAILED (exit {child.returncode})\n{child.stderr[-3000:]}")
        return 1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"  run_analysis --from-csv{'' if WITH_MODELS else ' --no-models'}: {seconds:.1f} s wall "
        f"(including Django start-up), peak RSS {peak:.0f} MiB, wrote {len(written)} files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
