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

train_and_certify() {  # NOISE OBJECTIVE SIGMA [extra flags for both]
  local noise=$1 objective=$2 s=$3 name=den_$1_$2_$3
  shift 3
  "$PY" -m experiments.train_denoiser --config=$CFG \
      --config.noise=$noise --config.sigma=$s \
      --config.denoiser.objective=$objective \
      --config.denoiser.classifier_workdir=$CLF "$@" \
      --workdir=$ROOT/$name > "$ROOT/$name.train.log" 2>&1
  # DSSN-trained denoisers are certified exactly, uniform-trained ones with
  # uniform noise at the config's N (500), like the classifiers of
  # docs/fashion_mnist.md.
  "$PY" -m experiments.certify --config=$CFG --config.sigma=$s \
      --config.certify.method=$noise \
      --config.certify.denoiser_workdir=$ROOT/$name \
      --config.certify.results_name=$name "$@" \
      --workdir=$CLF > "$ROOT/$name.certify.log" 2>&1
  mkdir -p "$OUT/results/$name"
  cp "$CLF/$name.tsv" "$CLF/$name.tsv.meta.json" \
      "$CLF/$name.summary.json" "$OUT/results/$name/"
}

mse_lane() {  # SIGMA: the MSE denoisers, DSSN and uniform, on 1,000 images.
  train_and_certify dssn mse "$1"
  train_and_certify uniform mse "$1"
}

# The stability objective at sigma 0.5 only (like the stability-trained
# classifiers of docs/fashion_mnist.md), with a third of an epoch of training
# (150 steps of 128 images) and certified on the first 300 of the 1,000
# images: what was left of the session's CPU after the MSE runs.
STABILITY=(--config.steps_per_epoch=150 --config.certify.max_examples=300)

mkdir -p "$ROOT"
"$PY" -m experiments.train --config=$CFG --config.noise=none \
    --config.num_epochs=2 --workdir=$CLF > "$ROOT/clf_none.train.log" 2>&1
mse_lane 0.25 &
mse_lane 0.5 &
train_and_certify dssn stability 0.5 "${STABILITY[@]}" &
train_and_certify uniform stability 0.5 "${STABILITY[@]}" &
wait
"$PY" -m experiments.denoised_tables --results="$OUT/results" \
    --reference=docs/fashion_mnist/results --out="$OUT/tables.md" \
    --timing_out="$OUT/timing.json"
