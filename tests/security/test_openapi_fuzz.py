"""Schemathesis against `agentdb serve`: generated requests (valid and not) to every operation
of agentdb's OpenAPI document, with an admin token and with a session token, for a bounded
number of cases each. No answer is a 5xx, and every answer conforms to the document: its
status is listed, its media type (problem+json for errors) and body match the schema."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import Stack, Tenant, open_tenant
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Bounded: every operation gets its explicit examples plus this many generated cases.
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzzed(stack: Stack) -> Tenant:
    """The tenant whose real ids replace generated ones, so requests get past the 404."""
    return open_tenant(stack, "fuzzed@example.com")


def _aim(case: Case, tenant: Tenant) -> None:
    """Real user and session ids, except where the request would delete them."""
    deleting_the_session = case.method.upper() == "DELETE" and case.path in {
        "/v1/sessions/{session_id}",
        "/v1/users/{user_id}",
    }
    if case.path_parameters is None or deleting_the_session:
        return
    if "session_id" in case.path_parameters:
        case.path_parameters["session_id"] = tenant.session_id
    if "user_id" in case.path_parameters:
        case.path_parameters["user_id"] = tenant.user_id


def _fuzz(stack: Stack, tenant: Tenant, token: str) -> list[str]:
    """Every operation, with valid and with invalid data; the first failure of each."""
    schema = schemathesis.openapi.from_url(
        f"{stack.api}/schema/openapi.json", headers={"Authorization": f"Bearer {token}"}
    )
    failures: list[str] = []
    for found in schema.get_all_operations():
        operation = found.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(mode))
            def check(case: Case) -> None:
                _aim(case, tenant)
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
                case.call_and_validate(base_url=stack.api, checks=CHECKS, timeout=120)

            try:
                check()
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - all reported at the end
                failures.append(f"{operation.label} ({mode.value}): {str(error)[:600]}")
    return failures


def test_admin_token_answers_conform(stack: Stack, fuzzed: Tenant) -> None:
    failures = _fuzz(stack, fuzzed, stack.admin_token)
    assert failures == [], "\n\n".join(failures)


def test_session_token_answers_conform(stack: Stack, fuzzed: Tenant) -> None:
    failures = _fuzz(stack, fuzzed, fuzzed.session_token)
    assert failures == [], "\n\n".join(failures)
