#!/usr/bin/env bash
# The first thing to run whenever a GPU is lent (the device tool): the test suite on CUDA.
#
#     bash benchmarks/gpu_tests.sh            # in a device `run`, timeout_s about 300
#
# 1. tests/test_device.py on the GPU (random draws from CUDA generators, a training step of every
#    projection and mode, torch.compile of random projections with inductor, sweeps, batch-norm
#    calibration, an exactly resumed run), then
# 2. the whole suite under the GPU machine's own torch (its python3 holds torch, pytest, hypothesis,
#    matplotlib; datasets and chromium are absent there, so the tests that need them skip).
# Reports go to $OUT (junit XML and the log). Smoke test on a CPU machine:
#     OUT=/tmp/o DEVICE=cpu PY=.venv/bin/python bash benchmarks/gpu_tests.sh
set -uo pipefail
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"
# -p no:logging: torch's DEBUG trace lines otherwise fill the report of a failing test
"$PY" -m pytest tests/test_device.py --device "$DEVICE" -q -p no:cacheprovider -p no:logging \
    --junitxml "$OUT/device.xml" 2>&1 | tee "$OUT/device.log"
first=${PIPESTATUS[0]}
"$PY" -m pytest tests --device "$DEVICE" -q -p no:cacheprovider -p no:logging --deselect tests/test_device.py \
    --junitxml "$OUT/suite.xml" > "$OUT/suite.log" 2>&1   # the whole log comes back: every failure's traceback
second=$?
tail -40 "$OUT/suite.log"
echo "device tests: exit $first; whole suite: exit $second" | tee -a "$OUT/machine.txt"
exit $(( first || second ))
