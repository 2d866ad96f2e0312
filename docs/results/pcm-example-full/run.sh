# The worked example of docs/devices.md on the whole of Fashion-MNIST (60,000 training images,
# all 10,000 test images), then a grid of time against the programming noise (prog = 0.5, 1, 2)
# on the CNN from the command line. Run from anywhere: bash docs/results/pcm-example-full/run.sh
set -e
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=${THREADS:-2}
OUT=runs/pcm-chip-full
T=1,3600,86400,2.6e6,3.15e7
S=$(date +%s)
.venv/bin/python examples/pcm_chip.py --train-subset 60000 --test-subset 10000 --out $OUT
echo "python part: $(( $(date +%s) - S )) s"
S=$(date +%s)
.venv/bin/robustweights sweep --model-factory examples.pcm_chip:cnn --state-dict $OUT/cnn.pt \
  --dataset fashion-mnist --distortion "pcm:t=$T,prog=0.5" --distortion "pcm:t=$T" \
  --distortion "pcm:t=$T,prog=2" --out $OUT/cli-cnn-prog --quiet
.venv/bin/robustweights report $OUT/cli-cnn-prog --out $OUT/cli-prog-report
echo "prog grid: $(( $(date +%s) - S )) s"
echo DONE
