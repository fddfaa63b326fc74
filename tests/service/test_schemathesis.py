"""schemathesis over the bridge's own OpenAPI document, against a live `sectra-bridge serve`.

The document (`/openapi.json`, behind the admin token) carries Sectra's own invocation schemas
(`sectra_client.schemas`), so schemathesis generates what Sectra could send, for every route, and
(negative mode) what breaks the document. The
properties: no 5xx (a not-ready `/readyz` excepted: that 503 is its job), every 4xx is our
`{"error", "message"}` shape, answers conform to the document (status, media type, schema), and
a refused request leaves nothing in Redis. Bounded and derandomized, so a run is repeatable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import SECTRA_TOKEN
from tests.service.live import ADMIN_TOKEN, LiveBridge, live_bridge, status_summary

MAX_EXAMPLES = 30
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE  # what fits the document, what does not
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    with live_bridge(redis_url, tmp_path_factory.mktemp("schemathesis"), db=12) as bridge:
        yield bridge
        logs = bridge.server.logs()
    print("\n" + status_summary("schemathesis", STATUSES))
    assert '"level": "error"' not in logs, logs[-3000:]


def _aim_at_the_mock(case: Any, live: LiveBridge) -> None:
    """Invocations call back to Sectra's mock, for the app in the path: the deep path runs, not only
    the allow-list refusal (tested on its own elsewhere) that a random callback URL would meet."""
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("callbackInfo"), dict):
            body["callbackInfo"] = {"url": live.sectra.url, "token": SECTRA_TOKEN}
        if "applicationId" in body and case.path_parameters:
            body["applicationId"] = case.path_parameters.get("app_id", body["applicationId"])


def _check(case: Any, live: LiveBridge) -> None:
    _aim_at_the_mock(case, live)
    before = live.keys()
    response = case.call(base_url=live.url, headers=AUTH, timeout=30)
    status = response.status_code
    STATUSES[status] += 1
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    if case.path != "/readyz":
        checks.append(not_a_server_error)
    case.validate_response(response, checks=checks, headers=AUTH)
    if 400 <= status < 500:
        body = response.json()
        assert set(body) == {"error", "message"}, body
    if status >= 400:
        assert live.keys() - before == set(), f"{case.method} {case.path} answered {status} and left keys"


def test_every_route_answers_as_documented(live: LiveBridge) -> None:
    # schemathesis's pytest plugin (`from_fixture` + `parametrize`) does not run under pytest 9, so
    # each operation's strategy drives a hypothesis test here, and every operation is tried.
    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH, timeout=10)
    failures: dict[str, BaseException] = {}
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), f"schemathesis cannot read an operation: {result.err()}"
        operations.append(result.ok())
    assert len(operations) >= 9, [op.label for op in operations]
    for operation in operations:

        @given(case=st.one_of(operation.as_strategy(POSITIVE), operation.as_strategy(NEGATIVE)))
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            _check(case, live)

        try:
            run()
        except Exception as exc:  # collected: every operation runs, all failures are reported below
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}:\n{exc}" for label, exc in failures.items())


def test_the_document_is_behind_the_admin_token(live: LiveBridge) -> None:
    refused = httpx.get(f"{live.url}/openapi.json", timeout=10)
    assert refused.status_code == 401 and set(refused.json()) == {"error", "message"}
    document = httpx.get(f"{live.url}/openapi.json", headers=AUTH, timeout=10).json()
    bodies = {
        path: operation["post"]["requestBody"]["content"]["application/json"]["schema"]
        for path, operation in document["paths"].items()
        if "post" in operation
    }
    webhook = {ref["$ref"].rsplit("/", 1)[1] for ref in bodies["/sectra/{app_id}"]["oneOf"]}
    assert webhook == {"CreateInvocation", "ModifyInvocation", "CancelInvocation", "DeleteInvocation"}
    assert bodies["/sectra/{app_id}/imagenotification"]["title"] == "NewImageFilesInvocation"
