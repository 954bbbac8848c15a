"""Property-based requests from the server's own OpenAPI schema (schemathesis): no input may cause a 5xx.

Bounded: at most MAX_EXAMPLES generated requests per operation, against the real server of the other protocol
tests (the tiny model, loaded, requests one at a time: a 503 or 504 would be a failure here too).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.servers import AUTH

schemathesis = pytest.importorskip("schemathesis")

MAX_EXAMPLES = 30
BUDGET_S = 90  # all operations together; the test fails rather than run on


@pytest.fixture(scope="module")
def server(protocol_server):
    return protocol_server


def fuzz(operation, base_url: str, max_examples: int) -> tuple[int, list[str]]:
    """(requests sent, failures) for one operation: each failure is the request that got a 5xx, as curl."""
    from schemathesis.checks import not_a_server_error

    sent = [0]

    @given(case=operation.as_strategy())
    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], derandomize=True, database=None)
    def run(case):
        response = case.call(base_url=base_url, headers=dict(AUTH), timeout=60)
        sent[0] += 1
        case.validate_response(response, checks=[not_a_server_error])

    try:
        run()
    except (Exception, BaseExceptionGroup) as e:  # schemathesis's FailureGroup: its text holds the response and a curl line
        return sent[0], [f"{operation.label}:\n{e}"]
    return sent[0], []


@pytest.mark.slow
def test_no_request_from_the_schema_makes_a_server_error(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=dict(AUTH), wait_for_schema=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v2/models/{name}/infer", "GET /v2/models/{name}", "GET /samples/{name}", "POST /v1/count"} <= labels, labels
    start, total, failures = time.monotonic(), 0, []
    for operation in operations:
        sent, found = fuzz(operation, server.url, MAX_EXAMPLES)
        total += sent
        failures += found
        assert time.monotonic() - start < BUDGET_S, f"fuzzing ran over {BUDGET_S} s after {total} requests"
    assert total >= len(operations), total
    assert not failures, "server errors:\n" + "\n".join(failures)
