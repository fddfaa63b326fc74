"""`pending_result_json` (the webhook's POST body) against pydantic's own dump of `pending_result`."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sectra_adapter import pending_result, pending_result_json

_IDS = st.text(min_size=1, max_size=40) | st.sampled_from(
    ['sl"ide', "sl\\ide", "\u00e4\u2028\x00", "@@slide-id@@"]
)


@settings(max_examples=500, deadline=None)
@given(_IDS, st.sampled_from(["1.0", "2.3.1", "v\u00e9"]))
def test_the_unframed_body_is_pydantics_dump(slide_id: str, version: str) -> None:
    ours = pending_result_json(slide_id, version)
    assert ours == pending_result(slide_id, version).model_dump_json().encode()
    assert json.loads(ours)["slideId"] == slide_id  # and an independent reader reads the id back


def test_a_framed_body_is_pydantics_dump_too() -> None:
    frame = [[(0.1, 0.1), (0.2, 0.1), (0.2, 0.2)]]
    ours = pending_result_json("slide-1", "1.0", frame=frame)
    assert ours == pending_result("slide-1", "1.0", frame=frame).model_dump_json().encode()
    assert json.loads(ours)["data"]["result"]["content"]  # the outline is drawn
