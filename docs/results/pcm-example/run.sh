set -e
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=2
S=$(date +%s)
.venv/bin/python examples/pcm_chip.py --out runs/pcm-chip
echo "python part: $(( $(date +%s) - S )) s"
S=$(date +%s)
for m in cnn transformer; do
  .venv/bin/robustweights sweep --model-factory examples.pcm_chip:$m --state-dict runs/pcm-chip/$m.pt \
    --dataset fashion-mnist --test-subset 2000 --distortion "pcm:t=1,3600,86400,2.6e6,3.15e7" \
    --distortion "pcm:t=1,3600,86400,2.6e6,3.15e7,compensation=none" --out runs/pcm-chip/cli-$m --quiet
done
.venv/bin/robustweights report runs/pcm-chip/cli-cnn runs/pcm-chip/cli-transformer --out runs/pcm-chip/cli
echo "cli part: $(( $(date +%s) - S )) s"
echo DONE
