#!/usr/bin/env bash
# Fine-tune on a lent GPU machine, inside a fixed time, from caches carried there in parts.
#
#   here:   python -m trainer bundle pack --data D --data E ... --out .gpu   (ignored folder)
#   there:  BUNDLE_DIR=/root/bundle BUDGET_MINUTES=7 OUT=/out bash scripts/gpu_fit.sh [fit options]
#   here:   python -m trainer bundle join <returned folder> --out runs/gpu/model.pt
#
# The machine has torch but not facenet-pytorch: its wheel travels in .whl/ (pip download
# --no-deps facenet-pytorch==2.6.0). The fit options are the sources and recipe, exactly as for
# `python -m trainer fit`; --budget-minutes fixes the epoch count after epoch 1 so the schedule
# ends in time. What comes back in $OUT: the fp16 model in pieces, the log, metrics and curves.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}" "${BUDGET_MINUTES:?}" "${BUNDLE_DIR:?}"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/fit.log"
python3 -m trainer bundle unpack "$BUNDLE_DIR"/p* --cache .cache 2>&1 | grep -v '%|' | tee -a "$OUT/fit.log" || exit 1
python3 -m trainer fit "$@" --budget-minutes "$BUDGET_MINUTES" --out runs/gpu 2>&1 | tee -a "$OUT/fit.log"
cp runs/gpu/metrics.jsonl runs/gpu/curves.png "$OUT/" 2>/dev/null
python3 -m trainer bundle shrink --model runs/gpu/model.pt --out "$OUT" 2>&1 | tee -a "$OUT/fit.log"
