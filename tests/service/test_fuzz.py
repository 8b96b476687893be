"""Property-based fuzzing of the live API against its own OpenAPI (schemathesis): no 5xx, no schema drift.

Every operation gets positive (schema-valid) and negative (schema-breaking) cases; each response must not
be a 5xx and must match the status codes, content types and schemas the OpenAPI declares. (The operations
are parametrized here rather than through `schemathesis.pytest.from_fixture`, whose lazy loader touches a
pytest internal that pytest 9 removed.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import RedisServerControl
from tests.service.conftest import ADMIN, PORTAL, Registry, running, seed, service_settings

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONS = (
    "GET /recommendations",
    "POST /events",
    "PUT /students/{student_id}",
    "GET /students/{student_id}",
    "POST /admin/reload",
    "GET /admin/model",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
)
#: Operations that take input (the others have nothing to break: negative cases cannot exist).
WITH_INPUT = (
    "GET /recommendations",
    "POST /events",
    "PUT /students/{student_id}",
    "GET /students/{student_id}",
)
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in WITH_INPUT
]
EXAMPLES = 40

pytestmark = pytest.mark.slow  # about 10 s of fuzzing in all


@pytest.fixture(scope="module")
def live(registry: Registry, redis_server: RedisServerControl) -> Iterator[tuple[str, Any]]:
    seed(redis_server)
    with running(service_settings(registry, redis_server.url)) as (server, _, _logs):
        yield server.url, schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_operation_is_fuzzed(live: tuple[str, Any]) -> None:
    _, schema = live
    labels = {f"{op.ok().method.upper()} {op.ok().path}" for op in schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode}" for label, mode in CASES])
def test_operation_conforms_to_its_openapi(live: tuple[str, Any], label: str, mode: GenerationMode) -> None:
    url, schema = live
    operation = schema.find_operation_by_label(label)
    headers = ADMIN if operation.path.startswith("/admin") else PORTAL

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: Any) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=CHECKS)

    check()
