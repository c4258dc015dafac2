# CPU image for the face-recognition server and its enrollment workers.
#   docker build -t facerec .
#   docker run -e REDIS_URL=redis://redis:6379/0 facerec                      # server, shipped model
#   docker run -e REDIS_URL=redis://redis:6379/0 facerec python worker.py
# The release model (models/facerec.pt) is baked in. Your own: mount it and set MODEL_PATH, e.g.
#   -v $PWD/runs/NAME:/custom:ro -e MODEL_PATH=/custom/model.pt
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE \
    TORCH_THREADS=1

# libgomp: OpenMP runtime used by faiss-cpu and torch; libglib2.0-0: needed by OpenCV's wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Heavy, rarely changing layers first. torch from the CPU index (PyPI's default wheel is CUDA);
# facenet-pytorch without its (obsolete) pins on torch/numpy/Pillow/torchvision; pip's conflict
# warning about those pins is expected and switched off (--no-warn-conflicts), see scripts/install.sh.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install facenet-pytorch==2.6.0 --no-deps
COPY requirements.txt .
RUN pip install --no-warn-conflicts -r requirements.txt

COPY recognizer/ recognizer/
COPY index/ index/
COPY trainer/ trainer/
COPY service/ service/
COPY models/ models/
COPY server.py worker.py gunicorn.conf.py ./

RUN useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
