#!/usr/bin/env bash
# Every full benchmark, one after another, for docs/BENCHMARKS.md. Run it on a quiet machine:
# anything else on the cores (a training run, a test suite) skews the latencies.
#
#   bench/run_all.sh [MODEL]             # default models/facerec.pt (the shipped model); about an hour on 2 cores
#   ONLY="gallery_scale enroll_queue" bench/run_all.sh
#
# Steps: dlib_cache (dlib's embeddings, on every core, skipped when cached), accuracy_vs_dlib,
# strangers (1:N against a growing gallery; needs the model's stranger curve), gallery_scale,
# training_speed, http_identify, enroll_queue. Each writes bench/results/<name>.json (+ PNG) and
# its log to bench/results/<name>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/facerec.pt}
ONLY=${ONLY:-"dlib_cache accuracy_vs_dlib strangers gallery_scale training_speed http_identify enroll_queue"}
PY=.venv/bin/python
CORES=$(nproc)
mkdir -p bench/results
[ -f "$MODEL" ] || { echo "no model at $MODEL: train one (python -m trainer fit) first" >&2; exit 2; }
# A copy, so a training run that rewrites its model.pt every epoch cannot change it mid-run; the
# files beside it (stranger curve, score calibration: <stem>.<kind>.json) go with it.
cp "$MODEL" /tmp/bench-model.pt
rm -f /tmp/bench-model.*.json
for side in "${MODEL%.pt}".*.json; do
  if [ -f "$side" ]; then cp "$side" "/tmp/bench-model.${side#"${MODEL%.pt}".}"; fi
done
SPLITS=$(dirname "$MODEL")/splits.json

wants() { [[ " $ONLY " == *" $1 "* ]]; }
step() {  # step NAME CMD...: run, log, and say how long it took
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" > "bench/results/$name.log" 2>&1 || { echo "$name failed; see bench/results/$name.log" >&2; tail -20 "bench/results/$name.log" >&2; exit 1; }
  echo "   done in $((SECONDS - t0)) s"
}

if wants dlib_cache; then
  $PY -c "import face_recognition" 2>/dev/null || .venv/bin/pip install --quiet --no-deps -r bench/requirements.txt
  echo "== dlib_cache: $CORES one-thread shards"
  t0=$SECONDS
  pids=()
  for ((k = 0; k < CORES; k++)); do
    OMP_NUM_THREADS=1 $PY -m bench.accuracy_vs_dlib --dlib-cache-only --shard "$k/$CORES" --threads 1 \
      > "bench/results/dlib_cache-$k.log" 2>&1 & pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "   done in $((SECONDS - t0)) s"
fi
if wants accuracy_vs_dlib; then
  step accuracy_vs_dlib env OMP_NUM_THREADS=1 $PY -m bench.accuracy_vs_dlib --model /tmp/bench-model.pt \
    --splits "$SPLITS" --threads 1
fi
if wants strangers; then
  if [ -f /tmp/bench-model.strangers.json ]; then
    step strangers env OMP_NUM_THREADS=$CORES $PY -m bench.strangers --model /tmp/bench-model.pt --threads "$CORES"
  else
    echo "== strangers: skipped, $MODEL has no stranger curve beside it (python -m trainer calibrate-strangers)"
  fi
fi
if wants gallery_scale; then
  step gallery_scale env OMP_NUM_THREADS=$CORES $PY -m bench.gallery_scale --model /tmp/bench-model.pt \
    --splits "$SPLITS" --threads "$CORES"
fi
if wants training_speed; then
  step training_speed env OMP_NUM_THREADS=$CORES $PY -m bench.training_speed --threads "$CORES" --data ../shared/data
fi
if wants http_identify; then
  step http_identify env OMP_NUM_THREADS=1 WEB_CONCURRENCY=2 $PY -m bench.http_identify --model /tmp/bench-model.pt --threads 1
fi
if wants enroll_queue; then
  step enroll_queue env OMP_NUM_THREADS=1 $PY -m bench.enroll_queue --model /tmp/bench-model.pt
fi
echo "results: bench/results/*.json, *.png; tables at the end of each bench/results/<name>.log"
