"""Invocation parsing: valid bodies become the schema's union; errors name fields, never values."""

from __future__ import annotations

import json

import pytest
from sectra_client.schemas import CreateInvocation

from sectra_adapter.errors import InvalidInvocation
from sectra_adapter.invocation import parse_invocation

CREATE = {
    "action": "create",
    "applicationId": "strand-default",
    "slideId": "s-1",
    "callbackInfo": {"url": "https://pacs.example/ia", "token": "tok-secret-123"},
    "cancellationToken": "c-1",
    "input": {"type": "wholeSlide"},
}


def test_a_create_invocation_parses() -> None:
    invocation = parse_invocation(json.dumps(CREATE).encode())
    assert isinstance(invocation, CreateInvocation) and invocation.slideId == "s-1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**CREATE, "input": {"type": "somethingElse"}}, "create.input"),
        ({**CREATE, "callbackInfo": {"token": "tok-secret-123"}}, "create.callbackInfo.url"),
        ({**CREATE, "action": "explode"}, "body"),
    ],
)
def test_errors_name_the_field_but_not_the_token(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInvocation) as invalid:
        parse_invocation(json.dumps(body))
    assert field in str(invalid.value) and "tok-secret-123" not in str(invalid.value)


def test_non_json_is_invalid() -> None:
    with pytest.raises(InvalidInvocation, match="Invalid JSON"):
        parse_invocation(b"tok-secret-123 is not json")
