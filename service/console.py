"""The web console: one HTML page, one script and one stylesheet, served at ``/``.

It is a plain client of the ``/v1`` API (the browser sends the operator's key in ``X-API-Key``
like any other client), so it holds no privileges of its own and needs no server-side session:
the page and its files are public, every action goes through the same checks as curl would.
No build step: the files under ``service/static/console/`` are served as they are.

A strict Content-Security-Policy (same-origin script, style and fetch only; images also from
``blob:`` URLs, the photos the operator picks) keeps injected markup from running: the API key
lives in the tab's ``sessionStorage``, so script injection is the threat worth closing.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).parent / "static" / "console"

console = Blueprint("console", __name__, static_folder=str(STATIC), static_url_path="/console")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@console.get("/")
def page() -> Response:
    """The console page (its script and stylesheet are under ``/console/``)."""
    response = send_from_directory(STATIC, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@console.get("/favicon.ico")
def favicon() -> Response:
    """The tab icon, where browsers look for it (a 404 here fills server logs and consoles)."""
    return send_from_directory(STATIC, "favicon.ico", mimetype="image/vnd.microsoft.icon", max_age=86400)


@console.after_request
def headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
