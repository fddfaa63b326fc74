"""Parsing an IA-API invocation body into `sectra_client`'s `Invocation` union.

pydantic's own error text repeats the offending input, and an invocation
carries the callback token: the message built here names fields and problems
only, so it can go into a 4xx answer and a log line.
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError
from sectra_client.schemas import Invocation

from sectra_adapter.errors import InvalidInvocation

_INVOCATION: TypeAdapter[Invocation] = TypeAdapter(Invocation)
_MAX_PROBLEMS = 5


def parse_invocation(body: bytes | str) -> Invocation:
    """The invocation in a webhook body; raises `InvalidInvocation` saying which fields are wrong."""
    try:
        return _INVOCATION.validate_json(body)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)[:_MAX_PROBLEMS]
        ]
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise InvalidInvocation("invalid invocation: " + "; ".join(problems) + suffix) from None
