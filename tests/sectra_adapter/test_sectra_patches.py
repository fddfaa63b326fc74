"""The hotspot gallery: built from the drawn hotspots, retagged as Sectra would, read back, answered.

Sectra's side is simulated as its SDK example does it: the stored result is fetched from
MockSectraServer, its JSON edited (patch `tag` indices, the action's `state` set to 1), and sent back
as a `modify` invocation's `input`. The oracle is the set of hotspots this test chose to tag.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import (
    AdaptedResult,
    ModifyInvocation,
    PatchResultContent,
    PrimitiveResultContent,
    Result,
    ResultResponse,
)

from sectra_adapter import (
    Hotspot,
    MarkerSummary,
    RunSummary,
    SectraAdapter,
    build_final_result,
    hotspot_review_result,
    read_review,
    reviewed_result,
)

WIDTH, HEIGHT = 50_000, 25_000
CD8_SPOTS = [Hotspot(1_000, 1_000, 2_000, 2_000, 0.41), Hotspot(10_000, 4_000, 2_000, 2_000, 0.77)]
KI67_SPOTS = [
    Hotspot(20_000, 8_000, 1_000, 1_000, 0.55),
    Hotspot(10_000, 4_000, 2_000, 2_000, 0.62),  # the same box as a CD8 hotspot
    Hotspot(90_000, 1_000, 500, 500, 0.99),  # off the slide: never drawn, never in the gallery
]


def run() -> RunSummary:
    return RunSummary(
        "slide-9",
        WIDTH,
        HEIGHT,
        [
            MarkerSummary("CD8", 0.1, 1.0, 10.0, 0.2, 0.2, 0.5, 0.9, list(CD8_SPOTS)),
            MarkerSummary("Ki67", 0.2, 2.0, 10.0, 0.3, 0.3, 0.6, 0.9, list(KI67_SPOTS)),
        ],
        "job_77",
        "3.1.0",
        0.5,
    )


def gallery(result: Result) -> Any:
    assert isinstance(result.data.result, PatchResultContent)
    return result.data.result.content


def box_of(spot: Hotspot) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = (
        spot.x / WIDTH,
        spot.y / WIDTH,
        (spot.x + spot.width) / WIDTH,
        (spot.y + spot.height) / WIDTH,
    )
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_one_patch_per_drawn_hotspot_strongest_first_nothing_verified_yet() -> None:
    result = hotspot_review_result(run(), context={"runId": "r-1"})
    assert Result.model_validate_json(result.model_dump_json()) == result
    content = gallery(result)
    expected = sorted(
        [("CD8", s) for s in CD8_SPOTS] + [("Ki67", s) for s in KI67_SPOTS[:2]],
        key=lambda pair: -pair[1].positive_fraction,
    )
    assert [p.sortKeyValue for p in content.patches] == [s.positive_fraction for _, s in expected]
    assert [[(p.x, p.y) for p in polygon.points] for polygon in content.polygons] == [
        box_of(s) for _, s in expected
    ]
    centres = [c for _, s in expected for c in ((s.x + s.width / 2) / WIDTH, (s.y + s.height / 2) / WIDTH)]
    assert [c for p in content.patches for c in (p.position.x, p.position.y)] == pytest.approx(centres)
    assert content.tags == ["Hotspot", "Agree", "Artefact"] and {p.tag for p in content.patches} == {0}
    # The largest box (2 000 px) fills a 256 px tile: 40x (0.25 µm/px assumed) * 256 / 2000.
    assert (content.patchSize, content.magnification) == (256, 5.12)
    assert gallery(hotspot_review_result(run(), microns_per_pixel=0.5)).magnification == 2.56
    assert [(a.name, a.state) for a in content.actions] == [("Recompute without artefacts", 0)]
    assert content.statuses["allowVerify"].value is False
    assert content.statuses["allowVerify"].message == "Review the hotspots first"
    context = result.data.context
    assert context["kind"] == "hotspot-review" and context["runId"] == "r-1"
    assert [(e["marker"], e["x"], e["y"]) for e in context["patches"]] == [(m, s.x, s.y) for m, s in expected]
    assert result.displayResult == "Hotspot review: 4 hotspots to review"


def test_the_gallery_shows_exactly_the_hotspots_the_final_result_draws() -> None:
    final = build_final_result(run(), max_primitives=3)
    assert isinstance(final.data.result, PrimitiveResultContent)
    drawn = sorted(
        tuple((p.x, p.y) for p in polygon.points)
        for item in final.data.result.content
        for polygon in item.polygons
    )
    shown = gallery(hotspot_review_result(run(), max_patches=3)).polygons
    assert sorted(tuple((p.x, p.y) for p in polygon.points) for polygon in shown) == drawn


def retag(stored: ResultResponse, tags: dict[int, int], *, press: bool) -> dict[str, Any]:
    """The `modify` invocation Sectra sends after the pathologist retagged patches (by index)."""
    body = copy.deepcopy(stored.model_dump(mode="json"))
    content = body["data"]["result"]["content"]
    for index, tag in tags.items():
        content["patches"][index]["tag"] = tag
    if press:
        content["actions"][0]["state"] = 1
    return {
        "action": "modify",
        "applicationId": "app",
        "slideId": stored.slideId,
        "callbackInfo": {"url": "http://sectra.invalid", "token": "t"},
        "cancellationToken": "c",
        "input": body,
    }


def test_a_retag_round_trip_through_mock_sectra_finds_exactly_the_artefacts(
    mock_sectra: MockSectraServer, token: str
) -> None:
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        stored = sectra.create_results("app", hotspot_review_result(run()))
        order = [(e["marker"], e["x"], e["y"]) for e in stored.data.context["patches"]]
        # The pathologist picks patches by what they show; find their indices the same way.
        ki67_shared = order.index(("Ki67", 10_000, 4_000))
        cd8_weak = order.index(("CD8", 1_000, 1_000))
        ki67_small = order.index(("Ki67", 20_000, 8_000))
        invocation = ModifyInvocation.model_validate(
            retag(stored, {ki67_shared: 2, cd8_weak: 2, ki67_small: 1}, press=True)
        )
        review = read_review(invocation.input)
        assert review.recompute_requested
        assert {(p.marker, p.hotspot.x, p.hotspot.y) for p in review.artefacts} == {
            ("Ki67", 10_000, 4_000),
            ("CD8", 1_000, 1_000),
        }
        assert [(p.marker, p.hotspot.x) for p in review.agreed] == [("Ki67", 20_000)]
        assert [(p.marker, p.hotspot.x) for p in review.untouched] == [("CD8", 10_000)]
        assert sorted((h.x, h.y, h.width, h.height) for h in review.artefact_boxes) == [
            (1_000, 1_000, 2_000, 2_000),
            (10_000, 4_000, 2_000, 2_000),
        ]
        answer = reviewed_result(invocation.input, review)
        updated = sectra.update_results(
            "app", stored.id, AdaptedResult(**answer.model_dump(), versionId=invocation.input.versionId)
        )
    content = gallery(updated)
    assert content.statuses["allowVerify"].value is True
    assert content.statuses["allowVerify"].message == "2 kept, 2 artefacts: figures recomputed"
    assert [a.state for a in content.actions] == [0]
    assert [p.tag for p in content.patches] == [p.tag for p in gallery(invocation.input).patches]
    assert updated.displayProperties["Review"] == "1 agreed, 2 tagged Artefact, 1 not reviewed"
    assert updated.displayResult == "Hotspots reviewed, 2 kept, 2 artefacts: figures recomputed"
    assert updated.data.context["review"] == {"agreed": 1, "artefacts": 2, "untouched": 1}
    # The answer is itself a gallery read_review accepts (a later modify reads it again).
    again = read_review(updated)
    assert again.artefact_boxes == review.artefact_boxes and not again.recompute_requested
    # The final result, rebuilt without the artefacts, no longer draws them in colour.
    rebuilt = build_final_result(replace(run(), excluded_hotspots=list(review.artefact_boxes)))
    assert rebuilt.displayProperties["Hotspots excluded"].startswith("2 hotspots tagged Artefact")
    assert rebuilt.displayProperties["CD8 hotspots drawn"] == 0  # the shared box is excluded for both
    assert rebuilt.displayProperties["Ki67 hotspots drawn"] == 1


def test_reordered_patches_are_matched_by_their_centre_and_sort_key() -> None:
    built = hotspot_review_result(run())
    stored = ResultResponse(**built.model_dump(), id=1, versionId="v1")
    order = [(e["marker"], e["x"], e["y"]) for e in built.data.context["patches"]]
    shared_ki67 = order.index(("Ki67", 10_000, 4_000))  # same centre as a CD8 patch
    body = retag(stored, {shared_ki67: 2, order.index(("CD8", 1_000, 1_000)): 1}, press=False)["input"]
    body["data"]["result"]["content"]["patches"].reverse()
    review = read_review(ResultResponse.model_validate(body))
    assert [(p.marker, p.hotspot.x, p.hotspot.y) for p in review.artefacts] == [("Ki67", 10_000, 4_000)]
    assert [(p.marker, p.hotspot.x) for p in review.agreed] == [("CD8", 1_000)]
    assert [p.index for p in review.patches] == [0, 1, 2, 3] and not review.recompute_requested


def test_nothing_tagged_keeps_everything() -> None:
    built = hotspot_review_result(run())
    review = read_review(built)
    assert len(review.untouched) == 4 and review.artefact_boxes == ()
    answer = reviewed_result(built, review)
    assert gallery(answer).statuses["allowVerify"].message == "All 4 hotspots kept: figures unchanged"


def broken(edit: str) -> ResultResponse:
    body = retag(
        ResultResponse(**hotspot_review_result(run()).model_dump(), id=1, versionId="v"), {}, press=False
    )["input"]
    content = body["data"]["result"]["content"]
    if edit == "kind":
        body["data"]["context"]["kind"] = "final"
    elif edit == "count":
        content["patches"].pop()
    elif edit == "tag":
        content["patches"][0]["tag"] = 7
    elif edit == "moved":
        content["patches"][0]["position"] = {"x": 0.9, "y": 0.01}
    elif edit == "context":
        body["data"]["context"]["patches"][1] = {"marker": "CD8"}
    return ResultResponse.model_validate(body)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("kind", "not a hotspot review: its context kind is 'final'"),
        ("count", "the gallery has 3 patches but was built with 4"),
        ("tag", "patch 0 has tag 7, but the gallery offers 3 tags"),
        ("moved", "patch 0 at \\(0.9, 0.01\\) is not one of the gallery's hotspots"),
        ("context", "context entry 1 is not a marker and a box"),
    ],
)
def test_a_result_that_is_not_our_gallery_is_refused_plainly(edit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_review(broken(edit))


def test_a_primitive_result_is_not_a_gallery() -> None:
    with pytest.raises(ValueError, match="not a patch gallery"):
        read_review(build_final_result(run()))


def test_a_summary_without_hotspots_gives_an_empty_gallery() -> None:
    empty = RunSummary("s", 100, 100, [], "job", "1.0", 0.5)
    result = hotspot_review_result(empty)
    assert gallery(result).patches == [] and result.displayResult == "Hotspot review: 0 hotspots to review"
    assert read_review(result).patches == ()


def test_an_app_drawing_bands_only_has_no_hotspots_to_review() -> None:
    assert gallery(hotspot_review_result(replace(run(), overlay="bands"))).patches == []
    assert len(gallery(hotspot_review_result(replace(run(), overlay="hotspots"))).patches) == 4
