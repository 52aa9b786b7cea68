"""Schemathesis over the service's own OpenAPI spec (real Cranfield indexes, in-process ASGI): no 5xx.

This server has no QA reader (reading makes a fuzz run minutes long), so its one allowed 5xx is /qa's
503 "QA not configured". The full run with QA and the reranker is ``bench/bench_service.py``
(bench/results/service.json: 574 cases, zero 5xx)."""

from __future__ import annotations

import pytest

from tests.api.conftest import API_KEY

pytestmark = [pytest.mark.java, pytest.mark.slow]


def test_no_server_errors_on_any_operation(loaded_state):
    schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (the 'dev' extra)")
    from hypothesis import HealthCheck, given, settings

    from sparsa.api import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(loaded_state.config, loaded_state))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    seen: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case):
            case.headers = {**(case.headers or {}), "X-API-Key": API_KEY}
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if case.path == "/qa" and response.status_code == 503:
                assert response.json()["detail"].startswith("QA not configured")
                return
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"

        no_5xx()
    assert sum(seen.values()) >= len(operations)
