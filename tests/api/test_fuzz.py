"""Schemathesis over the service's own OpenAPI spec (real Cranfield indexes, in-process ASGI): no 5xx, and
every response conforms to the schema: its status is documented, its content type, headers and body match,
for valid requests and for invalid ones (the 422 body is the documented ErrorBody).

This server has no QA reader (reading makes a fuzz run minutes long), so its one allowed 5xx is /qa's
503 "QA not configured" (documented). The run with QA and the reranker is ``bench/bench_service.py``."""

from __future__ import annotations

import pytest

from tests.api.conftest import API_KEY

pytestmark = [pytest.mark.java, pytest.mark.slow]


def test_every_operation_answers_what_its_schema_says(loaded_state):
    schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (the 'dev' extra)")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from sparsa.api import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(loaded_state.config, loaded_state))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    checks = [status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    seen: dict[int, int] = {}
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in ((op, mode) for op in operations for mode in modes):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case):
            case.headers = {**(case.headers or {}), "X-API-Key": API_KEY}
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=checks)
            if case.path == "/qa" and response.status_code == 503:
                assert response.json()["detail"].startswith("QA not configured")
                return
            assert response.status_code < 500, (case.method, case.path, response.status_code,
                                                response.text[:300])

        try:
            conforms()
        except Unsatisfiable:  # nothing to make invalid (GET /health, /metrics)
            assert mode == schemathesis.GenerationMode.NEGATIVE, operation
    assert sum(seen.values()) >= 2 * len(operations) and 200 in seen and 422 in seen
