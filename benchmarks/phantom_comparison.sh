#!/usr/bin/env bash
# The phantom comparison of the three variants at cpu-64: baseline, expert, expert-al (rounds 1-3), then the
# Table-1-style table with effectiveness, expert probability shift and true-counterfactual error.
# BUDGET (seconds of training per run, default 900) and N (phantom images, default 4000) scale it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUDGET=${BUDGET:-900}
N=${N:-4000}
TAG=${TAG:-phantom-cmp}
OUT=${OUT:-var/phantom-comparison}
$PY manage.py import_dataset --kind phantom --root var/data/phantom --resolution 64 --n "$N" --seed 0 \
    --name "$TAG-data" 2>/dev/null || echo "data set $TAG-data already registered"
for variant in baseline expert expert-al; do
    $PY manage.py train_generator --dataset "$TAG-data" --variant "$variant" --preset cpu-64 --budget "$BUDGET" \
        --seed 0 --name "$TAG-$variant"
    $PY manage.py evaluate_generator "$TAG-$variant" --checkpoint all --n 256 --figures "$OUT/figures/$variant"
done
$PY manage.py evaluate_generator --compare "$TAG-baseline" "$TAG-expert" "$TAG-expert-al" --out "$OUT"
echo "table: $OUT"
