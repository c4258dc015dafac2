"""Key coverage, over the app's own URL map: every ``/v1`` route, with every method it
answers, refuses a request without a key (401) or with an unknown key (401), and a read key
where an admin key is needed (403). Routes come from :func:`service.app.register_routes`, so a
route added later is checked without anyone adding it here; a route outside ``/v1`` must be one
of the few that are open on purpose."""
from __future__ import annotations

import pytest
from flask import Flask

from service.app import register_routes

ADMIN, READ = "coverage-admin-key", "coverage-read-key"
# POST routes that only read (a query photo in the body); every other non-GET route changes data.
READ_ONLY_POSTS = {"v1.identify", "v1.verify"}
# Open on purpose: readiness for load balancers, the Prometheus scrape, the contract, the console.
OPEN = {"/health", "/metrics", "/openapi.json", "/", "/favicon.ico", "/console/<path:filename>"}
SAMPLE_VALUES = {"person_id": "nobody-here", "image_hash": "0" * 64, "job_id": "0123abcd"}


def _routes() -> list[tuple[str, str, str]]:
    probe = Flask("route-probe", static_folder=None)  # as create_app builds it
    register_routes(probe)
    return sorted((rule.rule, method, rule.endpoint) for rule in probe.url_map.iter_rules()
                  for method in rule.methods - {"OPTIONS"})


ROUTES = _routes()
V1 = [r for r in ROUTES if r[0].startswith("/v1/")]


def test_the_url_map_is_what_the_service_serves(service_app_factory):
    app = service_app_factory()
    served = sorted((rule.rule, method, rule.endpoint) for rule in app.url_map.iter_rules()
                    for method in rule.methods - {"OPTIONS"})
    assert served == ROUTES
    assert len(V1) >= 9  # identify, verify, people (4 routes), images (2), enroll, jobs: at least
    assert {rule for rule, _, _ in ROUTES if not rule.startswith("/v1/")} <= OPEN


@pytest.fixture
def keyed(service_app_factory):
    return service_app_factory(ADMIN_API_KEYS=ADMIN, READ_API_KEYS=READ)


@pytest.mark.parametrize(("rule", "method", "endpoint"), V1, ids=[f"{m} {r}" for r, m, _ in V1])
def test_every_v1_route_needs_its_key(keyed, rule, method, endpoint):
    view = keyed.view_functions[endpoint]
    role = getattr(view, "required_role", None)
    expected = "read" if method in ("GET", "HEAD") or endpoint in READ_ONLY_POSTS else "admin"
    assert role == expected, f"{method} {rule} must be decorated with @require({expected!r}), has {role!r}"

    arguments = next(r for r in keyed.url_map.iter_rules(endpoint) if r.rule == rule).arguments
    url = keyed.url_map.bind("localhost").build(endpoint, {a: SAMPLE_VALUES.get(a, "x1") for a in arguments})
    client = keyed.test_client()

    def send(headers: dict[str, str]):
        return client.open(url, method=method, headers=headers, json={})

    missing = send({})
    assert missing.status_code == 401, (method, url, missing.status_code)
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    if method != "HEAD":
        assert missing.json["error"] == "unauthorized"
    assert send({"X-API-Key": "not-a-key"}).status_code == 401
    assert send({"Authorization": f"Basic {READ}"}).status_code == 401  # only X-API-Key or Bearer

    read = send({"Authorization": f"Bearer {READ}"})
    if expected == "admin":
        assert read.status_code == 403, (method, url, read.status_code)
        if method != "HEAD":
            assert read.json["error"] == "forbidden"
    else:
        assert read.status_code not in (401, 403), (method, url, read.status_code)
    assert send({"X-API-Key": ADMIN}).status_code not in (401, 403)
