#!/usr/bin/env bash
# Part 2's quality check: does the sign-trained small CNN degrade less than the float one under
# add-gauss (sigma=1.0, 5 trials) on Fashion-MNIST? Trains both (6 epochs, about 2 minutes each on
# 2 CPU cores), sweeps them with the weights distorted several ways, and writes one report.
#   bash benchmarks/fmnist_robustness.sh [RUNS_DIR] [REPORT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/fmnist-robustness}
REPORT=${2:-docs/results/part2/fmnist}
RW=${RW:-.venv/bin/robustweights}
TRAIN=(--model cnn --dataset fashion-mnist --epochs 6 --batch-size 100 --lr 2e-3 --schedule cosine --seed 0 --quiet)
GRIDS=(--distortion "add-gauss:sigma=0:1.5:0.25" --distortion "power:beta=0:1:0.25" --distortion "quant:bits=1..4"
       --trials 5 --seed 0 --quiet)
for p in identity sign; do
  [ -f "$RUNS/train-$p/checkpoint.pt" ] || $RW train "${TRAIN[@]}" --projection $p --out "$RUNS/train-$p"
done
# The weights each network runs with (float weights; the sign network's binary weights):
$RW sweep "$RUNS/train-identity" "${GRIDS[@]}" --on projected --out "$RUNS/sweep-identity"
$RW sweep "$RUNS/train-sign" "${GRIDS[@]}" --on projected --out "$RUNS/sweep-sign"
# method.md's default: the hidden weights (for the sign network, weights it never ran with):
$RW sweep "$RUNS/train-sign" "${GRIDS[@]}" --on hidden --out "$RUNS/sweep-sign-hidden"
# Batch-norm statistics re-estimated on 20 training batches after distorting:
$RW sweep "$RUNS/train-identity" "${GRIDS[@]}" --on projected --bn-reestimate 20 --out "$RUNS/sweep-identity-bn"
$RW sweep "$RUNS/train-sign" "${GRIDS[@]}" --on projected --bn-reestimate 20 --out "$RUNS/sweep-sign-bn"
$RW report "$RUNS/sweep-identity" "$RUNS/sweep-sign" --out "$REPORT" --at add-gauss=1.0 --at power=0 --at quant=1 \
  --title "Fashion-MNIST, small CNN: float vs sign-trained, distorting the weights each runs with"
$RW report "$RUNS/sweep-identity-bn" "$RUNS/sweep-sign-bn" --out "$REPORT-bn" --at add-gauss=1.0 --at power=0 \
  --at quant=1 --title "Same networks, batch-norm statistics re-estimated after distorting"
$RW report "$RUNS/sweep-identity" "$RUNS/sweep-sign-hidden" --out "$REPORT-hidden" --at add-gauss=1.0 --at power=0 \
  --at quant=1 --title "Same networks, distorting the hidden weights (method.md default)"
