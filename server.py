"""HTTP server entry point.

Development:  ``flask --app server run``  (Flask finds ``create_app``)
Production:   ``gunicorn -c gunicorn.conf.py``  (several workers, the model loaded in each)

Settings come from the environment; see :mod:`service.config`.
"""
from __future__ import annotations

from service.app import create_app

__all__ = ["create_app"]

if __name__ == "__main__":  # python server.py: the development server, for a quick look
    import os

    create_app().run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
