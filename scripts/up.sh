#!/usr/bin/env bash
# Brings the service up on this machine: installs into .venv/ if needed, uses the Redis at
# REDIS_URL (or starts a local redis-server with deploy/redis.conf, AOF on, data in .cache/redis),
# starts WORKERS enrollment workers in the background and the gunicorn server in the foreground.
# In front of gunicorn, nginx (deploy/nginx.conf) buffers every request whole, so slow clients
# cannot hold gunicorn's threads; gunicorn then listens on loopback only (PORT+1). NGINX=0 runs
# gunicorn alone on PORT (development only: a few slow connections starve it).
# Ctrl-C stops the server and the workers (a Redis this script started keeps running).
#   PORT=8000 WORKERS=1 WEB_CONCURRENCY=2 MODEL_PATH=runs/NAME/model.pt scripts/up.sh  (default: models/facerec.pt)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
PORT=${PORT:-8000}
WORKERS=${WORKERS:-1}
NGINX=${NGINX:-1}

# The model: MODEL_PATH, else the release model that ships in models/ (no training needed).
model=$(.venv/bin/python -c "from recognizer.artifact import default_model_path; print(default_model_path())")
[ -f "$model" ] || { echo "model not found: $model (MODEL_PATH=${MODEL_PATH:-unset})" >&2; exit 1; }
echo "model: $model"

redis_ping() { .venv/bin/python -c "import redis,sys; redis.Redis.from_url('$REDIS_URL', socket_timeout=2).ping()" 2>/dev/null; }
if ! redis_ping; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "No Redis answers at $REDIS_URL and redis-server is not installed." >&2
    echo "Install it (Debian/Ubuntu: sudo apt-get install redis-server) or set REDIS_URL." >&2
    exit 1
  fi
  port=$(.venv/bin/python -c "from urllib.parse import urlparse; print(urlparse('$REDIS_URL').port or 6379)")
  mkdir -p .cache/redis
  echo "starting redis-server on port $port (AOF in .cache/redis)"
  redis-server deploy/redis.conf --port "$port" --bind 127.0.0.1 --dir "$PWD/.cache/redis" \
    --daemonize yes --logfile "$PWD/.cache/redis/redis.log"
  for _ in $(seq 50); do redis_ping && break; sleep 0.1; done
  redis_ping || { echo "redis-server did not start: see .cache/redis/redis.log" >&2; exit 1; }
fi

mkdir -p .cache/logs
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for i in $(seq "$WORKERS"); do
  .venv/bin/python worker.py > ".cache/logs/worker-$i.log" 2>&1 &
  pids+=($!)
  echo "worker $i: pid $! (log .cache/logs/worker-$i.log)"
done
if [ "$NGINX" != 0 ] && ! command -v nginx >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nginx missing: installing Debian's nginx-light package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "nginx is needed in front of gunicorn (slow clients would starve it): install it" \
         "(Debian/Ubuntu: apt-get install nginx-light), or run NGINX=0 scripts/up.sh for development" >&2
    exit 1
  fi
fi
if [ "$NGINX" != 0 ]; then
  run=$PWD/.cache/nginx
  mkdir -p "$run"
  sed -e "s|\${LISTEN}|0.0.0.0:$PORT|" -e "s|\${UPSTREAM}|127.0.0.1:$((PORT + 1))|" -e "s|\${RUNDIR}|$run|g" \
    deploy/nginx.conf > "$run/nginx.conf"
  nginx -c "$run/nginx.conf" -g "daemon off;" 2> .cache/logs/nginx.log &
  pids+=($!)
  echo "nginx: :$PORT -> gunicorn 127.0.0.1:$((PORT + 1)) (log .cache/logs/nginx.log)"
  export TRUSTED_PROXIES=${TRUSTED_PROXIES:-1} GUNICORN_BIND="127.0.0.1:$((PORT + 1))"
else
  echo "NGINX=0: gunicorn alone on :$PORT (slow clients can starve it; not for production)" >&2
  export GUNICORN_BIND="0.0.0.0:$PORT"
fi
echo "server: http://127.0.0.1:$PORT  (console at /, API under /v1, contract at /openapi.json)"
.venv/bin/gunicorn -c gunicorn.conf.py &
pids+=($!)
wait "${pids[-1]}"
