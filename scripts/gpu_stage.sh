#!/usr/bin/env bash
# First of two calls on a lent GPU machine: keep the carried bundle parts there, and time a step.
#
# One call carries at most 64 MiB, and the release model (47 MiB) with the whole bundle does not
# fit in one. So the first call carries the large part (p0: the manifest, the teacher and most
# crops) with the repository minus the model, and this script copies it out of the working copy
# to BUNDLE_DIR, which outlives the call while the machine stays warm; the second call carries the
# rest and the init model, and runs scripts/gpu_fit.sh (which reads every part in BUNDLE_DIR).
#
#   here:   python -m trainer bundle pack ... --out .gpu; the init model copied to .gpu/init/
#   there:  BUNDLE_DIR=/root/bundle OUT=/out bash scripts/gpu_stage.sh .gpu/p0
#
# It also times the trainer's step on the GPU against the raw model (bench.training_speed on
# synthetic images) at each of BATCH_SIZES (default 128 and 512), so that a step that cannot use
# the chip is seen, and a batch size chosen, before the long call.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}" "${BUNDLE_DIR:?}"
mkdir -p "$BUNDLE_DIR"
for part in "$@"; do
    cp -r "$part" "$BUNDLE_DIR/" || exit 1
done
du -sh "$BUNDLE_DIR"/* | tee "$OUT/stage.log"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/stage.log"
python3 -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__)" \
    | tee -a "$OUT/stage.log"
for batch in ${BATCH_SIZES:-128 512}; do  # the step is bound by the host: a larger batch may cost no more a step
    timeout 120 python3 -m bench.training_speed --device cuda --ways bf16 --steps 20 --rounds 2 --data /nonexistent \
        --threads 8 --batch-size "$batch" --out "$OUT/training_speed_cuda_b$batch.json" 2>&1 | grep -v '%|' \
        | tee -a "$OUT/stage.log"
done
