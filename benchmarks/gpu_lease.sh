#!/usr/bin/env bash
# One fifteen-minute GPU lease (the device tool), spent in two calls made back to back (a warm machine
# waits 30 s): CIFAR-10 travels in two parts (.gpu/a, .gpu/b; see benchmarks/gpu_cifar.py --pack).
#
#   call 1 (carry .gpu/a, timeout_s 420):  bash benchmarks/gpu_lease.sh first      (SUITE=1: + whole suite;
#       QUICK=1: only the CUDA graph's tests and batch-50 speed (eager, graph), leaving the lease to one row;
#       LEAN=1: batch 50 only and no reduce-overhead compile: the rest was measured in the first two leases)
#       tests/test_device.py on CUDA, then training images/s of full-width bc-vgg (bf16, channels-last,
#       fused Adam) at batch 50, 100 and 200, eager and with the whole step as one CUDA graph (train
#       --cuda-graph); 2 and 4 graphed networks at once, a thread each (rows_at_once); the graph with
#       cudnn.benchmark and with the model through torch.compile first; where an eager step's time goes
#       (torch.profiler); batch 50 compiled with reduce-overhead. Each has a time limit.
#   call 2 (carry .gpu/b):  BUDGET=<seconds left> bash benchmarks/gpu_lease.sh second
#       unpacks CIFAR-10, trains ROW with the paper recipe (`reproduce all --scale paper`; with cuda_graph=true
#       when call 1's graph tests passed, unless NO_GRAPH=1), then sweeps and judges; sends back paper.tgz
#       (config, metrics.jsonl, sweeps, claims; no checkpoints) and row.txt. ROW unset (or ROW=next): the next
#       row not yet recorded in RECORDED (default docs/results/reproduce-gpu/paper-500; the order stoch-mult,
#       stoch-sign, identity, sign: `bash benchmarks/gpu_lease.sh next` prints it), all 500 epochs with the
#       best validation epoch kept (EPOCHS=500): what BUDGET leaves untrained, a second `second` call of the
#       same lease (the machine keeps /tmp while warm) resumes from its checkpoint, then sweeps; nothing to
#       train when every row is recorded. ROW=stoch-sign (or several, ROW=stoch-sign,sign,stoch-mult,identity
#       trains the four at once, a thread and a CUDA stream each, when call 1's test of that passed): those
#       rows shortened to the epochs that fit BUDGET at the speed call 1 measured (EPOCHS overrides); if the
#       graph or the threads fail, the time left tries the rows in turn, then eagerly.
#   next: the row `second` trains when ROW is unset (nothing printed: every row is recorded).
#
# Everything lands in $OUT as it comes. Smoke test on a CPU machine (tiny sizes, no data needed for `first`):
#     OUT=/tmp/o CPU=1 PY=.venv/bin/python bash benchmarks/gpu_lease.sh first
#     OUT=/tmp/o CPU=1 PY=.venv/bin/python BUDGET=200 [ROW=stoch-sign,sign] bash benchmarks/gpu_lease.sh second
#     PY=.venv/bin/python [RECORDED=folder] bash benchmarks/gpu_lease.sh next
set -uo pipefail
[ "${1:-}" = next ] || OUT=${OUT:?set OUT}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
T=${LEASE_TMP:-/tmp}   # where the calls of one lease leave each other files (the machine keeps /tmp while warm)
RECORDED=${RECORDED:-docs/results/reproduce-gpu/paper-500}   # the rows windows have recorded
next_row() { "$PY" -c "import sys; from robustweights.paper.judging import next_row
print(next_row(sys.argv[1]) or '')" "$RECORDED"; }
if [ "${1:-}" = next ]; then next_row; exit; fi
mkdir -p $T/xz
for part in .gpu/a .gpu/b; do [ -d "$part" ] && cp "$part"/* $T/xz/; done
if [ -n "${CPU:-}" ]; then DEV=cpu; SIZE=(--models cnn --width 0.25); BATCHES=(8 16); R=(--rounds 1 --per-round 2)
else DEV=cuda; SIZE=(--models bc-vgg --width 1); BATCHES=(50 100 200); R=(--rounds 5 --per-round 20); fi

case "${1:-}" in
first)
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
      "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } \
        | tee "$OUT/machine.txt"
    # -p no:logging: torch's DEBUG trace lines otherwise fill the captured output of a failing test
    if [ -z "${QUICK:-}" ]; then
        timeout 150 "$PY" -m pytest tests/test_device.py --device "$DEV" -q -p no:cacheprovider -p no:logging \
            -k "not cuda_graph" --junitxml "$OUT/device.xml" 2>&1 | tail -60 | tee "$OUT/device.log"
        echo "device tests: exit ${PIPESTATUS[0]}" | tee -a "$OUT/machine.txt"
    fi
    # train --cuda-graph's own tests decide whether call 2 trains with it, rows_at_once's whether several at once
    timeout 90 "$PY" -m pytest tests/test_device.py --device "$DEV" -q -p no:cacheprovider -p no:logging \
        -k "cuda_graph and not at_once" --junitxml "$OUT/graph.xml" 2>&1 | tail -60 | tee "$OUT/graph_tests.log"
    [ "${PIPESTATUS[0]}" = 0 ] && [ -z "${CPU:-}" ] && touch $T/graph_ok
    if [ -z "${QUICK:-}" ]; then
        timeout 90 "$PY" -m pytest tests/test_device.py --device "$DEV" -q -p no:cacheprovider -p no:logging \
            -k at_once --junitxml "$OUT/together.xml" 2>&1 | tail -60 | tee "$OUT/together_tests.log"
        [ "${PIPESTATUS[0]}" = 0 ] && [ -z "${CPU:-}" ] && touch $T/together_ok
    fi
    echo "cuda-graph tests: $([ -f $T/graph_ok ] && echo passed || echo 'failed or skipped'); rows at once:" \
        "$([ -f $T/together_ok ] && echo passed || echo 'failed or skipped')" | tee -a "$OUT/machine.txt"
    [ -n "${QUICK:-}${LEAN:-}" ] && BATCHES=("${BATCHES[0]}")   # batch 50 only
    for b in "${BATCHES[@]}"; do
        timeout 45 "$PY" benchmarks/projection_overhead.py "${SIZE[@]}" --batch "$b" --amp --fused "${R[@]}" \
            --projections sign stoch-sign stoch-mult:gamma=0.5 2>&1 | grep -v "^W1" | tee -a "$OUT/speed.txt"
    done
    # the eager batch-50 rate of stoch-sign sizes call 2's training, or the graph's when it works
    awk '/batch '"${BATCHES[0]}"',/{on=1} on && $1=="stoch-sign"{print $5; exit}' "$OUT/speed.txt" > $T/rate
    if [ -n "${CPU:-}" ]; then echo "(no CUDA graph on a CPU)"; else
        for b in "${BATCHES[@]}"; do   # batch 50 first: its stoch-sign rate sizes call 2
            timeout 100 "$PY" benchmarks/projection_overhead.py --cuda-graph "${SIZE[@]}" --batch "$b" --amp \
                "${R[@]}" --projections sign stoch-sign stoch-mult:gamma=0.5 2>&1 | grep -v "^W1" | tee -a "$OUT/graph.txt"
        done
        cat "$OUT/graph.txt" >> "$OUT/speed.txt"
        awk '$1=="stoch-sign"{print $5; exit}' "$OUT/graph.txt" > $T/rate_graph
        # several rows at once (reproduce's rows_at_once): 2 and 4 graphed networks, a thread and a CUDA stream
        # each, against one; the stoch-sign gain sizes call 2 when it trains several rows
        for n in $([ -z "${QUICK:-}" ] && echo 2 4); do
            timeout 60 "$PY" benchmarks/projection_overhead.py --cuda-graph --concurrent $n --threads "${SIZE[@]}" \
                --batch "${BATCHES[0]}" --amp "${R[@]}" --projections sign stoch-sign 2>&1 | grep -v "^W1" \
                | tee "$T/together$n" | tee -a "$OUT/speed.txt"
            awk '$1=="stoch-sign"{print $4; exit}' "$T/together$n" > "$T/gain$n"
        done
        if [ -z "${QUICK:-}" ]; then   # levers on one row's batch-50 step, and where its time goes
            timeout 60 "$PY" benchmarks/projection_overhead.py --cuda-graph --cudnn-benchmark "${SIZE[@]}" --batch \
                "${BATCHES[0]}" --amp "${R[@]}" --projections sign stoch-sign 2>&1 | grep -v "^W1" | tee -a "$OUT/speed.txt"
            # (sign only: a random projection's draws break the compiled graph at each layer, so it compiles longer)
            timeout 120 "$PY" benchmarks/projection_overhead.py --cuda-graph --compile "${SIZE[@]}" --batch \
                "${BATCHES[0]}" --amp "${R[@]}" --projections sign 2>&1 | grep -v "^W1" | tee -a "$OUT/speed.txt"
            timeout 60 "$PY" benchmarks/projection_overhead.py --profile "${SIZE[@]}" --batch "${BATCHES[0]}" --amp \
                --fused --projections sign stoch-sign 2>&1 | grep -v "^W1\|USDT" > "$OUT/profile.txt"
            grep "ms of" "$OUT/profile.txt"
        fi
    fi
    [ -n "${QUICK:-}${LEAN:-}" ] || timeout 120 "$PY" benchmarks/projection_overhead.py --compile --compile-mode \
        reduce-overhead --fused "${SIZE[@]}" --batch "${BATCHES[0]}" --amp "${R[@]}" --projections sign stoch-sign \
        2>&1 | grep -v "^W1" | tee -a "$OUT/speed.txt"
    if [ -n "${SUITE:-}" ]; then  # the whole suite on this machine (about 3 minutes on an H200 machine)
        # -v names each test as it starts; a test stuck for 60 s dumps every thread's stack into the log
        timeout "${SUITE_S:-240}" "$PY" -m pytest tests --device "$DEV" -v -p no:cacheprovider -p no:logging \
            -o faulthandler_timeout=60 --deselect tests/test_device.py --junitxml "$OUT/suite.xml" \
            > "$OUT/suite.log" 2>&1
        grep -v PASSED "$OUT/suite.log" | tail -40
    fi
    date -u | tee -a "$OUT/machine.txt"
    ;;
second)
    BUDGET=${BUDGET:?set BUDGET, the seconds this call may take}
    ROW=${ROW:-next}   # or one or several, comma-separated: trained at once (rows_at_once), one thread each
    if [ "$ROW" = next ]; then   # the next row not recorded, the recipe whole (a later call resumes it)
        ROW=$(next_row) || exit 2
        [ -n "$ROW" ] || { echo "every row is recorded in $RECORDED: nothing to train" | tee -a "$OUT/log.txt"; exit 0; }
        EPOCHS=${EPOCHS:-500}
    fi
    echo "$ROW" > "$OUT/row.txt"
    NROWS=$(echo "$ROW" | tr ',' '\n' | wc -l)
    SETS=(--set "rows=$ROW" --set checkpoint_every=5)
    if [ -n "${CPU:-}" ]; then  # smoke test: a sliver of the recipe on Fashion-MNIST's demo subset
        SETS+=(--set model=cnn --set width=0.25 --set dataset=demo --set preprocess=standardize)
        SETS+=(--set train_subset=800 --set val_size=300 --set test_subset=200 --set trials=1 --set bn_calibrate=2)
        # (the test suite runs it: a part of the data, one trial a cell)
    else
        "$PY" benchmarks/gpu_cifar.py --unpack $T/xz $T/cifar/cifar-10-batches-py || exit 2
        SETS+=(--set data_dir=$T/cifar/cifar-10-batches-py)
    fi
    RATE=$(cat $T/rate 2>/dev/null); RATE=${RATE:-5000}
    # Attempts, each in its own folder, the next only when the one before failed by its own fault (exit 1, or 2
    # naming --cuda-graph): the graph with the rows at once (when call 1's tests of both passed), the graph with
    # the rows in turn, eager. NO_GRAPH=1 skips the graph.
    ATTEMPTS=()
    if [ -f $T/graph_ok ] && [ -s $T/rate_graph ] && [ -z "${NO_GRAPH:-}" ]; then
        { [ "$NROWS" -gt 1 ] && [ -f $T/together_ok ]; } && ATTEMPTS+=("graph $NROWS")
        ATTEMPTS+=("graph 1")
    fi
    ATTEMPTS+=("eager 1")
    [ -n "${CPU:-}" ] && [ "$NROWS" -gt 1 ] && ATTEMPTS=("eager $NROWS" "${ATTEMPTS[@]}")   # smoke test: threads
    # Epochs that fit: 45,000 images at the benchmark's rate plus 5%, 0.4 s of evaluation an epoch, 50 s kept
    # for start, data and ZCA and 5 s a row for its sweep. With NROWS rows at once, a row's rate is the rate times
    # the gain call 1 measured for 2 or 4 graphed networks at once, over NROWS; in turn, the rate over NROWS.
    # Measured (H200): eager 7.5 s an epoch at a benchmark rate of 5,921 img/s (first lease); graph 2.0 s at
    # 27,875 (second); 4 graphed rows at once 4.07 s an epoch at 29,234 x 1.45 / 4, sweeps and set-up 69 s in all
    # (third: its margin of a tenth and 10 s a row left 106 of 545 s unused).
    epochs_for() { "$PY" -c "r = $2 * ${3:-1} / $NROWS
print(max(1, min(500, int(($1 - 50 - 5 * $NROWS) / (45000 / r * 1.05 + 0.4)))))"; }
    run() {  # run SECONDS FOLDER EPOCHS [--set ...]
        echo "$(date -u): $3 epochs of $ROW in at most $1 s, ${*:4}" | tee -a "$OUT/log.txt"
        timeout --signal=INT "$1" "$PY" -m robustweights reproduce all --scale paper --out "$2" --quiet \
            --set "epochs=$3" "${SETS[@]}" "${@:4}" 2>&1 | grep -v "it/s\]\|img/s\]" | tail -80 | tee -a "$OUT/log.txt"
        return "${PIPESTATUS[0]}"
    }
    # One folder per attempt, row set and length: a later call of the same lease (the machine keeps /tmp while
    # warm) with the same settings resumes it; other settings start their own (reproduce refuses to mix).
    START=$SECONDS
    for attempt in "${ATTEMPTS[@]}"; do
        read -r kind together <<< "$attempt"
        rate=$RATE gain=1 extra=(--set "rows_at_once=$together")
        if [ "$kind" = graph ]; then
            rate=$(cat $T/rate_graph); extra+=(--set cuda_graph=true)
            if [ "$together" -gt 1 ]; then G=$T/gain4; [ "$NROWS" -lt 4 ] && G=$T/gain2; gain=$(cat $G 2>/dev/null); fi
        fi
        LEFT=$((BUDGET - (SECONDS - START)))
        N=${EPOCHS:-$(epochs_for "$LEFT" "$rate" "${gain:-1}")}; PAPER=$T/paper-${ROW//,/+}-$N-$kind-$together
        run $((LEFT - 10)) "$PAPER" "$N" "${extra[@]}"
        rc=$?
        if [ "$rc" = 1 ] || { [ "$rc" = 2 ] && tail -3 "$OUT/log.txt" | grep -q "cuda[-_]graph"; }; then
            echo "exit $rc ($kind, $together at once): the next way in the time left" | tee -a "$OUT/log.txt"
            continue
        fi
        break
    done
    echo "exit $rc" | tee -a "$OUT/log.txt"
    date -u >> "$OUT/log.txt"
    (cd "$PAPER" && tar czf "$OUT/paper.tgz" --exclude='*.pt' --exclude=report .)
    ;;
*) echo "usage: bash benchmarks/gpu_lease.sh first|second|next" >&2; exit 2 ;;
esac
