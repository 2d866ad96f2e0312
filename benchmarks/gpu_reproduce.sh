#!/usr/bin/env bash
# `robustweights reproduce` at gpu scale on a lent GPU (the device tool), the rows that say most:
# identity, sign and stoch-mult (claims 1, 2 and 5), with a budget that fits one call.
#
# Before: carry CIFAR-10 xz-compressed in two calls (see benchmarks/gpu_cifar.py --pack; .gpu/a and
# .gpu/b), the first call copying .gpu/a/* to /tmp/xz/. Then, within the warm window:
#
#     bash benchmarks/gpu_reproduce.sh 20 100      # EPOCHS BATCH_SIZE [SCALE]
#
# The run folder (checkpoints: ~170 MB a row at full width) stays in /tmp; $OUT gets claims.json,
# claims.md, reproduce.json, the sweep results and per-epoch metrics. The device has no matplotlib:
# make the report here afterwards with `robustweights report <sweeps...> --claims claims.json`.
# Smoke test on a CPU machine: OUT=/tmp/o bash benchmarks/gpu_reproduce.sh 1 100 tiny
set -euo pipefail
EPOCHS=${1:?epochs}
BATCH=${2:?batch size}
SCALE=${3:-gpu}
OUT=${OUT:?set OUT}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
SETS=(--set rows=identity,sign,stoch-mult --set epochs="$EPOCHS" --set batch_size="$BATCH")
if [ "$SCALE" = gpu ]; then
    if [ -d .gpu/b ]; then cp .gpu/b/* /tmp/xz/; fi
    python3 benchmarks/gpu_cifar.py --unpack /tmp/xz /tmp/cifar/cifar-10-batches-py
    SETS+=(--set data_dir=/tmp/cifar/cifar-10-batches-py)
fi
RUN=/tmp/repro-$SCALE
python3 -m robustweights reproduce all --scale "$SCALE" --out "$RUN" --quiet "${SETS[@]}" 2>&1 | tee "$OUT/log.txt"
python3 - "$RUN" "$OUT" <<'PY'
import shutil, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("claims.json", "claims.md", "reproduce.json"):
    shutil.copy(run / name, out / name)
for row in (run / "sweeps").iterdir():
    shutil.copytree(row, out / "sweeps" / row.name)
for row in (run / "train").iterdir():
    (out / "train" / row.name).mkdir(parents=True)
    for name in ("metrics.jsonl", "config.json"):
        shutil.copy(row / name, out / "train" / row.name / name)
PY
