"""Property-based run over the OpenAPI schema (schemathesis): no 5xx, no schema violation.

Every operation gets a bounded number of generated requests against the app on a fitted tiny
store; each answer must be a documented status with a documented media type and body, and
never a server error. Mutating operations run without a key (the schema documents the 401).
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.service_helpers import copy_store, fitted_template, make_settings

# Examples per operation and mode (valid, invalid): 14 x 2 x 10 requests, ~12 s on 2 cores.
EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    store = copy_store(fitted_template(base), base / "fuzz-store")
    app = create_app(make_settings(store.root, max_n=256, max_steps=64), store=store, poll=False)
    with TestClient(app):  # run the lifespan once
        yield app


@pytest.mark.slow
def test_schema_holds(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            statuses[case.call_and_validate(checks=CHECKS).status_code] += 1

        try:
            run()
        except Unsatisfiable:  # no parameters to make invalid (GET /healthz)
            assert mode is GenerationMode.NEGATIVE
    # The run reached the handlers (200s) and the refusals (401, 404, 422), never a 5xx.
    assert {200, 401, 422} <= set(statuses), statuses
    assert not [s for s in statuses if s >= 500], statuses
