#!/usr/bin/env bash
# Brings the service up on this machine: installs into .venv/ if needed, starts WORKERS enrollment
# workers in the background and the gunicorn server in the foreground.
# In front of gunicorn, nginx (deploy/nginx.conf) buffers every request whole, so slow clients
# cannot hold gunicorn's threads; gunicorn then listens on loopback only (PORT+1). NGINX=0 runs
# gunicorn alone on PORT (development only: a few slow connections starve it).
# Ctrl-C stops the server and the workers (a Redis this script started keeps running).
#   PORT=8000 WORKERS=1 WEB_CONCURRENCY=2 MODEL_PATH=runs/NAME/model.pt scripts/up.sh  (default: models/facerec.pt)
#
# Redis: the one at REDIS_URL when given; otherwise a redis-server of its own (deploy/redis.conf,
# AOF on, data in .cache/redis, 127.0.0.1 port REDIS_PORT, default 6390), never whatever answers
# on the usual 6379: that may be another application's database. It says which one it uses.
# Address: 127.0.0.1 (this computer only) unless API keys are set (ADMIN_API_KEYS/READ_API_KEYS:
# then 0.0.0.0) or HOST says otherwise (HOST=0.0.0.0 opens a keyless server to the network).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
PORT=${PORT:-8000}
WORKERS=${WORKERS:-1}
NGINX=${NGINX:-1}

# The model: MODEL_PATH, else the release model that ships in models/ (no training needed).
model=$(.venv/bin/python -c "from recognizer.artifact import default_model_path; print(default_model_path())")
[ -f "$model" ] || { echo "model not found: $model (MODEL_PATH=${MODEL_PATH:-unset})" >&2; exit 1; }
echo "model: $model"

redis_ping() { .venv/bin/python -c "import redis, sys; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()" "$1" 2>/dev/null; }
redis_dir() { .venv/bin/python -c "import redis, sys; print(redis.Redis.from_url(sys.argv[1], socket_timeout=2).config_get('dir')['dir'])" "$1" 2>/dev/null || true; }
if [ -n "${REDIS_URL:-}" ]; then
  shown=$(printf '%s' "$REDIS_URL" | sed -E 's#//[^@/]*@#//***@#')  # no password in the output
  if ! redis_ping "$REDIS_URL"; then
    echo "No Redis answers at REDIS_URL=$shown. Start it, or unset REDIS_URL to let this script run its own." >&2
    exit 1
  fi
  echo "Redis: $shown (from REDIS_URL)"
else
  REDIS_PORT=${REDIS_PORT:-6390}
  mkdir -p .cache/redis
  data=$(cd .cache/redis && pwd -P)
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  if redis_ping "$REDIS_URL"; then
    other=$(redis_dir "$REDIS_URL")
    if [ "$other" != "$data" ]; then
      echo "Another Redis (data in ${other:-an unknown place}) answers on 127.0.0.1:$REDIS_PORT; it is not this" \
           "project's, so it is left alone. Set REDIS_PORT to a free port, or REDIS_URL to a Redis to use." >&2
      exit 1
    fi
    echo "Redis: this project's own at 127.0.0.1:$REDIS_PORT (already running; data in .cache/redis)"
  else
    if ! command -v redis-server >/dev/null 2>&1; then
      echo "redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server)" \
           "or set REDIS_URL to a Redis to use." >&2
      exit 1
    fi
    # Two servers must never share one data directory (an earlier up.sh used port 6379).
    pid=$(cat "$data/redis.pid" 2>/dev/null || true)
    if { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } ||
       { redis_ping redis://127.0.0.1:6379/0 && [ "$(redis_dir redis://127.0.0.1:6379/0)" = "$data" ]; }; then
      echo "This project's Redis already runs on another port with the data in .cache/redis (an earlier" \
           "up.sh, or another REDIS_PORT). Stop it (redis-cli -p PORT shutdown) or set REDIS_PORT to its port." >&2
      exit 1
    fi
    redis-server deploy/redis.conf --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$data" \
      --daemonize yes --logfile "$data/redis.log" --pidfile "$data/redis.pid"
    for _ in $(seq 50); do redis_ping "$REDIS_URL" && break; sleep 0.1; done
    redis_ping "$REDIS_URL" || { echo "redis-server did not start: see .cache/redis/redis.log" >&2; exit 1; }
    echo "Redis: started this project's own at 127.0.0.1:$REDIS_PORT (AOF in .cache/redis; it keeps running" \
         "after Ctrl-C: redis-cli -p $REDIS_PORT shutdown stops it)"
  fi
fi

# The same reading of the key lists as service/config.py: comma-separated, blanks ignored.
keys=$(printf '%s' "${ADMIN_API_KEYS:-}${ADMIN_API_KEY:-}${READ_API_KEYS:-}${READ_API_KEY:-}" | tr -d ', \t')
if [ -n "${HOST:-}" ]; then
  host=$HOST
elif [ -n "$keys" ]; then
  host=0.0.0.0
else
  host=127.0.0.1
fi
case "$host" in *:*) bind="[$host]:$PORT" ;; *) bind="$host:$PORT" ;; esac

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
  sed -e "s|\${LISTEN}|$bind|" -e "s|\${UPSTREAM}|127.0.0.1:$((PORT + 1))|" -e "s|\${RUNDIR}|$run|g" \
    deploy/nginx.conf > "$run/nginx.conf"
  nginx -c "$run/nginx.conf" -g "daemon off;" 2> .cache/logs/nginx.log &
  pids+=($!)
  echo "nginx: $bind -> gunicorn 127.0.0.1:$((PORT + 1)) (log .cache/logs/nginx.log)"
  export TRUSTED_PROXIES=${TRUSTED_PROXIES:-1} GUNICORN_BIND="127.0.0.1:$((PORT + 1))"
else
  echo "NGINX=0: gunicorn alone on $bind (slow clients can starve it; not for production)" >&2
  export GUNICORN_BIND="$bind"
fi
case "$host" in
  127.0.0.1|localhost|::1)
    if [ -n "$keys" ]; then why="HOST=$host"; else
      why="no API keys set; set ADMIN_API_KEYS/READ_API_KEYS, or HOST=0.0.0.0 to open it to the network anyway"; fi
    echo "server: http://$bind, reachable from this computer only ($why)" ;;
  *)
    [ -n "$keys" ] || echo "WARNING: HOST=$host with no API keys: anyone who can reach port $PORT can" \
                          "enroll, identify and delete people." >&2
    echo "server: listening on $bind (http://127.0.0.1:$PORT here; the console's camera needs" \
         "https:// or localhost in the browser)" ;;
esac
echo "        console at /, API under /v1, contract at /openapi.json"
.venv/bin/gunicorn -c gunicorn.conf.py &
pids+=($!)
wait "${pids[-1]}"
