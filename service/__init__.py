"""The HTTP face-recognition service: Redis-backed gallery, FAISS cache, RQ enrollment jobs.

Modules, one concept each:

* :mod:`service.config`  -- settings from the environment (and overrides for tests).
* :mod:`service.store`   -- the gallery in Redis, the single source of truth.
* :mod:`service.cache`   -- the per-process FAISS index that follows Redis' change stream.
* :mod:`service.jobs`    -- the enrollment job (run by ``worker.py``) and how to enqueue it.
* :mod:`service.inputs`  -- turning HTTP requests into images and validated parameters.
* :mod:`service.auth`    -- API keys.
* :mod:`service.metrics` -- Prometheus text exposition.
* :mod:`service.openapi` -- the OpenAPI 3 document.
* :mod:`service.api`     -- the ``/v1`` blueprint.
* :mod:`service.app`     -- ``create_app``, the Flask application factory.
"""
