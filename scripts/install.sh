#!/usr/bin/env bash
# Installs everything the project needs into .venv/ at the project root, and does nothing when
# .venv/ is already up to date with requirements.txt and this script (a stamp file records that).
#
# torch is pinned to 2.13.0 (CPU). facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3,
# so it is installed with --no-deps: it runs fine on the versions we pin. It also imports torchvision,
# but only for two small functions; recognizer/_torchvision_shim.py supplies them when torchvision is
# absent, which keeps the install near 1.5 GB instead of a 5.5 GB CUDA build of torch+torchvision.
# pip would then print, in red, "ERROR: pip's dependency resolver ... facenet-pytorch requires
# torch<2.3 ..." on every install, which reads as a failed install although it is expected: its
# conflict warning is off (--no-warn-conflicts) and `pip check` runs at the end instead, reporting
# any conflict that does not come from facenet-pytorch's pins (nor from face-recognition wanting
# `dlib` where bench/requirements.txt installed the same library as dlib-bin).
# Set TORCH_INDEX_URL to a PyTorch CPU wheel index on machines where plain PyPI would bring CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp_inputs() { cat requirements.txt scripts/install.sh; }
want=$(stamp_inputs | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.install-stamp 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "installing into .venv/ (torch CPU, facenet-pytorch, requirements.txt) ..."
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-warn-conflicts)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${pip[@]}" torch==2.13.0 --index-url "$TORCH_INDEX_URL"
else
  "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" --no-deps facenet-pytorch==2.6.0
"${pip[@]}" -r requirements.txt
.venv/bin/python -c "import torch, faiss, flask, rq; from recognizer._torchvision_shim import import_facenet_pytorch; import_facenet_pytorch()" || {
  echo "install check failed: a core package does not import" >&2; exit 1; }
conflicts=$(.venv/bin/python -m pip check 2>&1 |
  grep -v -e '^facenet-pytorch ' -e '^face-recognition .* requires dlib,' -e '^No broken requirements' || true)
if [ -n "$conflicts" ]; then
  echo "note: pip check reports (the expected facenet-pytorch pins are left out):" >&2
  echo "$conflicts" >&2
fi
echo "$want" > .venv/.install-stamp
echo "installed: $(du -sh .venv/ | cut -f1) in .venv/"
