#!/usr/bin/env bash
# The denoised-smoothing study of docs/denoised.md, on Fashion-MNIST.
#
#   bash experiments/denoised_study.sh [RUNS_DIR] [OUT_DIR]
#
# A classifier trained without noise; DnCNN denoisers trained in front of it
# under DSSN and under uniform noise, each with the MSE and the stability
# objective, at sigma 0.25 and 0.5; each pair certified (DSSN exactly,
# uniform at N = 500) on the 1,000 test images of docs/fashion_mnist.md.
# Every stage resumes when rerun. The per-image results are copied to
# OUT_DIR/results and the tables regenerated from those copies.
set -euo pipefail
ROOT=${1:-runs/denoised}
OUT=${2:-docs/denoised}
CFG=configs/fashion_mnist.py:denoised
PY=${PYTHON:-python}
CLF=$ROOT/clf_none

lane() {  # One sigma: four denoisers, each trained then certified.
  local s=$1 noise objective name
  # MSE first: it needs no classifier and is the study's main comparison.
  for objective in mse stability; do
    for noise in dssn uniform; do
      name=den_${noise}_${objective}_${s}
      "$PY" -m experiments.train_denoiser --config=$CFG \
          --config.noise=$noise --config.sigma=$s \
          --config.denoiser.objective=$objective \
          --config.denoiser.classifier_workdir=$CLF \
          --workdir=$ROOT/$name > "$ROOT/$name.train.log" 2>&1
      # DSSN-trained denoisers are certified exactly, uniform-trained ones
      # with uniform noise at the config's N (500), like the classifiers of
      # docs/fashion_mnist.md.
      "$PY" -m experiments.certify --config=$CFG --config.sigma=$s \
          --config.certify.method=$noise \
          --config.certify.denoiser_workdir=$ROOT/$name \
          --config.certify.results_name=$name \
          --workdir=$CLF > "$ROOT/$name.certify.log" 2>&1
      mkdir -p "$OUT/results/$name"
      cp "$CLF/$name.tsv" "$CLF/$name.tsv.meta.json" \
          "$CLF/$name.summary.json" "$OUT/results/$name/"
    done
  done
}

mkdir -p "$ROOT"
"$PY" -m experiments.train --config=$CFG --config.noise=none \
    --config.num_epochs=2 --workdir=$CLF > "$ROOT/clf_none.train.log" 2>&1
lane 0.25 &
first=$!
lane 0.5
wait $first
"$PY" -m experiments.denoised_tables --results="$OUT/results" \
    --reference=docs/fashion_mnist/results --out="$OUT/tables.md" \
    --timing_out="$OUT/timing.json"
