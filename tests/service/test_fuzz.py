"""Schemathesis fuzzing of a real server against its own OpenAPI document: no 5xx, no schema violation."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from ._server import AUTH, Server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import checks  # noqa: E402

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]
"""Every check but positive_data_acceptance: a schema-valid payload can still repeat one machine and time,
which the engine's rules refuse (documented as 422)."""

MAX_EXAMPLES = int(os.environ.get("ATOMIC_FUZZ_EXAMPLES", "12"))
"""Examples per operation: a few in the default suite; `make fuzz` raises it."""


def _fuzz(url: str, max_examples: int) -> int:
    """Runs every operation of the served document with ``max_examples`` generated cases each."""
    from hypothesis import given

    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [r.ok() for r in api.get_all_operations()]
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=max_examples,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case) -> None:  # noqa: ANN001
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        run()
    return len(operations)


class TestFuzz:
    """Generated requests, valid and not, never get a 5xx or an answer outside the documented schema."""

    def test_api(self, server: Server) -> None:
        """Every operation, authorised, with a few examples each (``make fuzz`` runs many more)."""
        assert _fuzz(server.url, MAX_EXAMPLES) == 6
