"""A schemathesis fuzz pass over /openapi.json against the real app (issue 12): every route
and method, schema-valid and schema-violating inputs (a bounded number of examples each,
FUZZ_EXAMPLES, default 25), keys on and sent. Asserts no 5xx, and that every answer matches the
contract: a documented status code, the documented content type and response schema."""
from __future__ import annotations

import os
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (requirements-dev.txt) is not installed: "
                                                          "run scripts/browser-deps.sh")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
ADMIN = "fuzz-admin-key"


@pytest.fixture
def fuzz_app(service_app_factory):
    return service_app_factory(ADMIN_API_KEYS=ADMIN, READ_API_KEYS="fuzz-read-key", RATE_LIMIT="off",
                               MAX_IMAGE_BYTES=200_000, MAX_CONTENT_LENGTH=1_000_000)


def test_fuzz_no_5xx_and_conformance(fuzz_app):
    """Each operation in turn, schema-valid (positive) then schema-violating (negative) cases.
    (Driven by hand with hypothesis: schemathesis's pytest plugin does not run on pytest 9.)"""
    from hypothesis import given

    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tried: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                response = case.call_and_validate(headers={"X-API-Key": ADMIN}, checks=checks)
                tried[f"{operation.label} {mode.value}"] += 1
                statuses[response.status_code] += 1

            try:
                run()
            except Unsatisfiable:  # nothing to violate: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
    negative = sum(n for label, n in tried.items() if label.endswith(GenerationMode.NEGATIVE.value))
    print(f"\nfuzz: {sum(tried.values())} cases ({negative} schema-violating) over {len(operations)} operations, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert len(operations) >= 12 and sum(tried.values()) >= 300
    assert not [code for code in statuses if code >= 500]
