"""Property-based fuzzing of `POST /sectra/{app_id}` and `/imagenotification` against a live bridge.

Each example starts from a valid IA-API invocation (create, modify, cancel, delete, newImageFiles;
shaped by `sectra_client.schemas`, with the stored result a real create returned) and mutates it
field by field: other JSON types, huge sizes, unicode and control characters, deep nesting,
removed and unknown fields, duplicate keys in the raw JSON text, and broken encodings. The
properties, for every answer: no 5xx; every 4xx is our `{"error", "message"}` shape; a refused
request leaves nothing in Redis. Real parts: `sectra-bridge serve`, Redis, Sectra's mock server.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sectra_client.schemas import (
    CancelInvocation,
    CreateInvocation,
    DeleteInvocation,
    ModifyInvocation,
    NewImageFilesInvocation,
)

from tests.service.conftest import SECTRA_TOKEN, slide_metadata
from tests.service.live import LiveBridge, live_bridge, status_summary

EXAMPLES_PER_FIELD = 8
EXAMPLES_ANYWHERE = 25
DEFAULT = "/sectra/strand-default"
NOTIFY = "/sectra/strand-notify/imagenotification"
STATUSES: Counter[int] = Counter()
_TOKENS = itertools.count()


# ---- a JSON document that may hold what `json` cannot: duplicate keys, nesting beyond recursion ----


@dataclass
class Obj:
    """A JSON object as its ordered (key, value) pairs, so a key may appear twice."""

    pairs: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Deep:
    """`depth` nested arrays, written as text (Python's own encoder would hit its recursion limit)."""

    depth: int


def tree(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj([(key, tree(item)) for key, item in value.items()])
    if isinstance(value, list):
        return [tree(item) for item in value]
    return value


def encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Obj):
        inner = ",".join(
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{encode(v, ascii_only)}" for k, v in value.pairs
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(item, ascii_only) for item in value) + "]"
    if isinstance(value, Deep):
        return "[" * value.depth + "]" * value.depth
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity come out as non-JSON tokens


def slots(value: Any) -> list[tuple[Any, int]]:
    """Every (container, index) in the document: the places a mutation can touch."""
    found: list[tuple[Any, int]] = []
    if isinstance(value, Obj):
        for i, (_, item) in enumerate(value.pairs):
            found.append((value, i))
            found += slots(item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.append((value, i))
            found += slots(item)
    return found


# ---- hostile values ---------------------------------------------------------------------------------

CONTROL = "\x00\x01\x07\x08\t\n\r\x1b\x7f\x85\u2028\u2029\u202e\ufeff\ufffe"
any_type = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**100, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),  # any code point, lone surrogates included
    st.lists(st.integers(), max_size=5),
    st.integers(1_000, 60_000).map(lambda n: [0] * n),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3).map(tree),
    st.integers(50, 20_000).map(Deep),
)
# What a string field may hold instead: other scripts, control and format characters, the empty
# string, quotes and escapes, sizes up to beyond the 1 MiB body limit, text that looks like secrets.
strings = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=CONTROL, min_size=1, max_size=20),
    st.tuples(st.text(max_size=10), st.sampled_from(CONTROL), st.text(max_size=10)).map("".join),
    st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x2FFFF), min_size=1, max_size=20),
    st.sampled_from(["", " ", 'a"b', 'token=a"b', "\\", "../../etc/passwd", "http://169.254.169.254/"]),
    st.integers(1_000, 1_200_000).map(lambda n: "x" * n),
)
numbers = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([2**63, 10**100, -1, 0])
)


def hostile(current: Any) -> st.SearchStrategy[Any]:
    """Mostly values of the field's own kind at their edges, sometimes any other JSON type."""
    if isinstance(current, str):
        return st.one_of(strings, strings, strings, any_type)
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        return st.one_of(numbers, numbers, any_type)
    return any_type


def _mutate_at(draw: st.DrawFn, container: Any, index: int) -> None:
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "duplicate", "add"]))
    if isinstance(container, Obj):
        key, current = container.pairs[index]
        if how == "replace":
            container.pairs[index] = (key, draw(hostile(current)))
        elif how == "delete":
            del container.pairs[index]
        elif how == "duplicate":  # the same key again, before or after, with another value
            container.pairs.insert(index + draw(st.integers(0, 1)), (key, draw(hostile(current))))
        else:
            container.pairs.append((draw(st.text(max_size=10)), draw(any_type)))
    elif how == "delete":
        del container[index]
    else:
        container[index] = draw(hostile(container[index]))


@st.composite
def requests(draw: st.DrawFn, path: str, base: dict[str, Any], only: str | None) -> bytes:
    """A mutated copy of `base` as raw bytes: mutations inside field `only`, or anywhere (None)."""
    base = {**base}
    if base["action"] in ("create", "newImageFiles"):  # a new run each time, so every example reaches Sectra
        base["cancellationToken"] = f"ct-{next(_TOKENS)}"
    document = tree(base)
    for _ in range(draw(st.integers(1, 3))):
        if only is None:
            places = slots(document)
        else:
            places = [(document, i) for i, (key, _) in enumerate(document.pairs) if key == only]
            for _, value in [document.pairs[i] for _, i in places]:
                places += slots(value)
        if not places:
            break
        container, index = draw(st.sampled_from(places))
        _mutate_at(draw, container, index)
    raw = encode(document, ascii_only=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if only is not None:
        return raw
    damage = draw(st.sampled_from(["none", "none", "truncate", "bad-utf8", "bom"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif damage == "bad-utf8":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + b"\xff\xc0" + raw[at:]
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    return raw


# ---- the live bridge and the valid starting points ------------------------------------------------


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    with live_bridge(redis_url, tmp_path_factory.mktemp("fuzz"), db=10) as bridge:
        yield bridge
        logs = bridge.server.logs()
    print("\n" + status_summary("fuzz", STATUSES))
    assert '"level": "error"' not in logs, logs[-3000:]


@pytest.fixture(scope="module")
def bases(live: LiveBridge) -> dict[str, tuple[str, dict[str, Any]]]:
    """A valid invocation per action; modify and delete carry the result a real create stored."""
    callback = {"url": live.sectra.url, "token": SECTRA_TOKEN}
    common = {
        "applicationId": "strand-default",
        "slideId": "slide-42",
        "callbackInfo": callback,
        "context": {},
    }
    create = {**common, "action": "create", "cancellationToken": "ct-base", "input": {"type": "wholeSlide"}}
    answer = httpx.post(f"{live.url}{DEFAULT}", json=create, timeout=30)
    assert answer.status_code == 200, answer.text
    stored = answer.json()  # the ResultResponse Sectra stored: what it sends back in modify and delete
    polygon = {"points": [{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]}
    return {
        "create": (DEFAULT, create),
        "create-multiArea": (
            DEFAULT,
            {**create, "input": {"type": "multiArea", "content": {"polygons": [polygon]}}},
        ),
        "modify": (DEFAULT, {**common, "action": "modify", "cancellationToken": "ct-base", "input": stored}),
        "cancel": (DEFAULT, {**common, "action": "cancel", "cancellationToken": "ct-base"}),
        "delete": (DEFAULT, {**common, "action": "delete", "input": stored}),
        "newImageFiles": (
            NOTIFY,
            {
                **common,
                "applicationId": "strand-notify",
                "action": "newImageFiles",
                "cancellationToken": "ct-base",
                "input": {"type": "wholeSlide"},
                "imageInfo": slide_metadata().model_dump(mode="json"),
            },
        ),
    }


# Field by field, as Sectra's own models name them; `None`: anywhere, with the raw text damaged too.
MODELS = {
    "create": CreateInvocation,
    "create-multiArea": CreateInvocation,
    "modify": ModifyInvocation,
    "cancel": CancelInvocation,
    "delete": DeleteInvocation,
    "newImageFiles": NewImageFilesInvocation,
}
CASES = [(kind, name) for kind, model in MODELS.items() for name in model.model_fields] + [
    (kind, None) for kind in MODELS
]


@pytest.mark.parametrize(("kind", "only"), CASES, ids=[f"{k}-{f or 'anywhere'}" for k, f in CASES])
def test_mutated_invocations_never_cost_a_5xx_or_a_half_created_run(
    live: LiveBridge, bases: dict[str, tuple[str, dict[str, Any]]], kind: str, only: str | None
) -> None:
    path, base = bases[kind]
    if only is not None and only not in base:
        base = {**base, only: None}  # an optional field the base leaves out: fuzz its presence too
    with httpx.Client(base_url=live.url, timeout=30) as client:

        @given(raw=requests(path, base, only))
        @settings(
            max_examples=EXAMPLES_PER_FIELD if only is not None else EXAMPLES_ANYWHERE,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(raw: bytes) -> None:
            before = live.keys()
            response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            STATUSES[response.status_code] += 1
            assert response.status_code < 500, (response.status_code, response.text[:500], raw[:300])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error", "message"}, body
                assert live.keys() - before == set(), f"a refused request ({response.status_code}) left keys"

        run()
