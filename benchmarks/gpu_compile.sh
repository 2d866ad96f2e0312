#!/usr/bin/env bash
# What torch.compile does on a lent GPU (the device tool), in two calls that also carry CIFAR-10:
#
#   call 1 (carries .gpu/a):  mkdir -p /tmp/xz && cp .gpu/a/* /tmp/xz/ && bash benchmarks/gpu_compile.sh steps
#   call 2 (carries .gpu/b, within the warm window):                    bash benchmarks/gpu_compile.sh cifar
#
# steps: full-width bc-vgg training steps, eager against compiled, bf16 autocast + channels-last, batch
#        200 and 500, float / sign / stoch-mult, with cold compile times (benchmarks/projection_overhead.py).
# cifar: the batch-200 recipe of docs/results/gpu-h200 (squared hinge, Glorot clip, lr 3e-3, 25 epochs),
#        float and sign, with --compile: images/s and seconds to 85% test accuracy, compilation included.
# Everything is written to $OUT. .gpu/a and .gpu/b: see `benchmarks/gpu_cifar.py --pack` (split in two).
# Smoke test on a CPU machine: OUT=/tmp/o bash benchmarks/gpu_compile.sh steps-cpu
set -euo pipefail
OUT=${OUT:?set OUT}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
case "${1:?steps or cifar}" in
  steps)
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
    for b in 200 500; do
      python3 benchmarks/projection_overhead.py --compile --models bc-vgg --width 1 --batch "$b" --amp \
          --rounds 5 --per-round 10 --projections sign stoch-mult:gamma=0.5 2>&1 | tee -a "$OUT/compile_steps.txt"
    done ;;
  steps-cpu)
    python3 benchmarks/projection_overhead.py --compile --models cnn --width 0.25 --batch 8 --amp \
        --rounds 1 --per-round 1 --projections sign stoch-mult:gamma=0.5 2>&1 | tee -a "$OUT/compile_steps.txt" ;;
  cifar)
    if [ -d .gpu/b ]; then cp .gpu/b/* /tmp/xz/; fi
    python3 benchmarks/gpu_cifar.py --unpack /tmp/xz /tmp/cifar/cifar-10-batches-py
    python3 benchmarks/gpu_cifar.py --data-dir /tmp/cifar/cifar-10-batches-py --out "$OUT/compiled" \
        --runs identity sign --batch-size 200 --lr 3e-3 --loss sq-hinge --clip glorot --epochs 25 \
        --budget-s 60 --compile 2>&1 | tee "$OUT/compiled.log" ;;
  *) echo "gpu_compile.sh: say steps or cifar" >&2; exit 2 ;;
esac
