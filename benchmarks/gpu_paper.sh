#!/usr/bin/env bash
# `robustweights reproduce all --scale paper` (BinaryConnect's recipe whole) on a lent GPU, in calls that
# each train until a time budget runs out and send their results back, the next call resuming on the warm
# machine where the last stopped (checkpoints every 25 epochs in /tmp/paper; metrics every epoch).
#
# Before the first call, here:  python benchmarks/gpu_cifar.py --pack ../shared/datasets/cifar-10-batches-py .gpu
#     (it writes the two parts .gpu/a and .gpu/b, 43 MiB each). Then, on the device:
#   call 1 (carry .gpu/a):  bash benchmarks/gpu_lease.sh first        # tests and speed; copies .gpu/a to /tmp/xz
#   call 2 (carry .gpu/b):  BUDGET=480 bash benchmarks/gpu_paper.sh                     # unpacks, trains 8 min
#   call 3, 4, ... (within the warm window): BUDGET=540 bash benchmarks/gpu_paper.sh    # goes on
# Each call writes $OUT/paper.tgz (claims when finished, every row's config, metrics.jsonl and sweep results;
# never checkpoints) and $OUT/log.txt. SETS adds overrides, e.g. SETS="--set rows=stoch-sign,sign --set
# cuda_graph=true" (once call 1's cuda-graph tests passed).
# Smoke test on a CPU machine: OUT=/tmp/o SCALE=tiny BUDGET=60 bash benchmarks/gpu_paper.sh
set -uo pipefail
OUT=${OUT:?set OUT}
BUDGET=${BUDGET:-480}
SCALE=${SCALE:-paper}
PY=${PY:-python3}
RUN=${RUN:-/tmp/repro-$SCALE}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
ARGS=(reproduce all --scale "$SCALE" --out "$RUN" --quiet)
if [ "$SCALE" != tiny ]; then
    if [ -d .gpu/b ]; then mkdir -p /tmp/xz && cp .gpu/b/* /tmp/xz/; fi
    [ -d /tmp/cifar/cifar-10-batches-py ] || "$PY" benchmarks/gpu_cifar.py --unpack /tmp/xz /tmp/cifar/cifar-10-batches-py
    ARGS+=(--set data_dir=/tmp/cifar/cifar-10-batches-py)
fi
# shellcheck disable=SC2206
ARGS+=(${SETS:-})
{ nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU"; date -u; } | tee -a "$OUT/log.txt"
timeout --signal=INT "$BUDGET" "$PY" -m robustweights "${ARGS[@]}" 2>&1 | tail -60 | tee -a "$OUT/log.txt"
echo "exit ${PIPESTATUS[0]} (124 or 130: the budget ran out; call again to go on)" | tee -a "$OUT/log.txt"
(cd "$RUN" 2>/dev/null && tar czf "$OUT/paper.tgz" --exclude='*.pt' --exclude='report' --exclude='data' . ) \
    || echo "nothing to send back yet" | tee -a "$OUT/log.txt"
