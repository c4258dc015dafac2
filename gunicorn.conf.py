"""gunicorn settings: ``gunicorn -c gunicorn.conf.py``.

Several worker processes, each building its own app -- and so loading the model and its
FAISS cache -- *after* the fork (``preload_app = False``): torch must not be initialised in
a parent that forks (its OpenMP pool can deadlock the children), and per-worker caches stay
consistent through Redis anyway. Each worker uses TORCH_THREADS (default 1) threads, so
WEB_CONCURRENCY workers x TORCH_THREADS should not exceed the cores.
"""
import os

wsgi_app = "server:create_app()"
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread: a worker keeps answering /health and /metrics while requests run the model: model
# requests take at most MAX_INFLIGHT (2) of its threads at once, the others 429.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
preload_app = False
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))  # a large group photo on a busy CPU
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))  # 0: never recycle (model reload is slow)
max_requests_jitter = 100
accesslog = "-"
# No credential in any form: no %(u)s (the Basic-auth user, which a client may fill with its key),
# no query string (%(U)s is the path alone), no Referer, no request headers.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
limit_request_field_size = 16384
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def post_fork(server, worker):
    """Pin torch's threads before the app (and torch) load in this worker."""
    os.environ.setdefault("TORCH_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["TORCH_THREADS"])
