"""Registration, info, probes, metrics and the admin API, over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis
from sectra_client.schemas import ApplicationInfo, InputType, Registration

from service.app import create_app
from service.health import check_work_dir
from service.registration import build_registration
from tests.service.conftest import SECTRA_TOKEN, Bridge, BridgeFactory, ServerThread, bridge_apps
from workers.apps import AppConfig, default_apps
from workers.runstore import RunStatus, RunStore
from workers.settings import Settings


def test_registration_uses_the_request_url(bridge: Bridge) -> None:
    response = bridge.client.get("/sectra/strand-default")
    assert response.status_code == 200
    registration = Registration.model_validate(response.json())
    assert registration.applicationId == "strand-default"
    assert registration.url == f"{bridge.url}/sectra/strand-default"
    assert registration.inputTemplate.type is InputType.WHOLE_SLIDE
    assert "CD8" in registration.displayName
    assert response.headers["X-Sectra-ApiVersion"]


def test_registration_prefers_the_public_url(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_PUBLIC_URL="https://bridge.hospital.example/")
    registration = Registration.model_validate(bridge.client.get("/sectra/strand-default").json())
    assert registration.url == "https://bridge.hospital.example/sectra/strand-default"


def test_build_registration_for_the_cli() -> None:
    app = default_apps()["strand-default"]
    registration = build_registration(app, "https://b.example/sectra/strand-default")
    assert registration.manufacturer == app.manufacturer
    assert registration.model_dump(mode="json")["inputTemplate"] == {"type": "wholeSlide"}


def test_registration_input_template_follows_the_app_input() -> None:
    def template(**fields: object) -> object:
        app = AppConfig.model_validate({"id": "r", "display_name": "R", "markers": ["CD8"], **fields})
        body = build_registration(app, "https://b.example/sectra/r").model_dump(mode="json")
        return Registration.model_validate(body).model_dump(mode="json")["inputTemplate"]

    assert template(input="taggedPolygon", tags=["Tumour", "Stroma"]) == {
        "type": "taggedPolygon",
        "content": {"tags": ["Tumour", "Stroma"]},
    }
    assert template(input="multiArea") == {"type": "multiArea"}
    assert template() == {"type": "wholeSlide"}


def test_registration_and_info_of_an_unknown_app(bridge: Bridge) -> None:
    for path in ("/sectra/nope", "/sectra/nope/info"):
        response = bridge.client.get(path)
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_app"


def test_info(bridge: Bridge) -> None:
    response = bridge.client.get("/sectra/strand-default/info")
    assert response.status_code == 200
    info = ApplicationInfo.model_validate(response.json())
    assert info.softwareVersion == default_apps()["strand-default"].version
    assert info.apiVersion


def test_healthz_and_readyz(bridge: Bridge) -> None:
    assert bridge.client.get("/healthz").json() == {"status": "ok"}
    ready = bridge.client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"] == {"ok": True}
    assert body["checks"]["work_dir"]["ok"] is True
    assert body["checks"]["work_dir"]["free_bytes"] > 0
    assert "X-Sectra-ApiVersion" not in ready.headers  # only answers to Sectra carry them


def test_readyz_fails_when_redis_is_down(tmp_path: Path) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    settings = Settings(BRIDGE_WORK_DIR=tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    app = create_app(settings, bridge_apps(), store=RunStore(dead), enqueue=lambda _: None)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["checks"]["redis"]["ok"] is False
    assert response.json()["checks"]["work_dir"]["ok"] is True


def test_work_dir_check_reports_low_space(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet" / "created"
    assert check_work_dir(missing)["ok"] is True
    starved = check_work_dir(missing, min_free_bytes=1 << 62)
    assert starved["ok"] is False
    assert "GiB" in starved["message"]
    assert check_work_dir(missing, min_free_fraction=1.01)["ok"] is False


def test_metrics_count_started_runs(bridge: Bridge) -> None:
    def started() -> float:
        text = bridge.client.get("/metrics").text
        for line in text.splitlines():
            if line.startswith('bridge_runs_started_total{app="strand-default"}'):
                return float(line.split()[-1])
        return 0.0

    before = started()
    assert bridge.post(bridge.invocation()).status_code == 200
    assert started() == before + 1
    assert bridge.client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_admin_api_is_off_without_a_token(bridge: Bridge) -> None:
    bridge.post(bridge.invocation())
    for path in ("/runs", "/runs?limit=notanumber", "/runs/run-0123"):
        response = bridge.client.get(path, headers={"Authorization": "Bearer guess"})
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_admin_api_with_a_token(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN="admin-secret")
    first = bridge.post(bridge.invocation(slideId="s-1")).json()
    bridge.post(bridge.invocation(slideId="s-2"))
    auth = {"Authorization": "Bearer admin-secret"}

    assert bridge.client.get("/runs").status_code == 401
    assert bridge.client.get("/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401

    listing = bridge.client.get("/runs", headers=auth)
    assert listing.status_code == 200
    runs = listing.json()["runs"]
    assert [r["slide_id"] for r in runs] == ["s-2", "s-1"]
    assert SECTRA_TOKEN not in listing.text
    assert all("callback_token" not in r for r in runs)

    run_id = runs[1]["run_id"]
    bridge.store.transition(run_id, RunStatus.downloading)
    filtered = bridge.client.get("/runs", params={"status": "downloading", "limit": 5}, headers=auth).json()
    assert [r["run_id"] for r in filtered["runs"]] == [run_id]
    assert bridge.client.get("/runs", params={"app": "other"}, headers=auth).json() == {"runs": []}
    bad = bridge.client.get("/runs", params={"status": "bogus"}, headers=auth)
    assert bad.status_code == 422
    assert "status" in bad.json()["message"]

    shown = bridge.client.get(f"/runs/{run_id}", headers=auth)
    assert shown.status_code == 200
    assert shown.json()["run"]["sectra_result_id"] == first["id"]
    assert [e["event"] for e in shown.json()["events"]] == ["created"]
    assert SECTRA_TOKEN not in shown.text

    # A figure that is not a number (a drawn region with no tissue has no share) reads null
    # (pydantic's JSON dump): the JSON stays valid (RFC 8259 has no NaN) and the run is shown.
    region = {"positive_fraction": float("nan"), "positive_area_mm2": 0.0, "tissue_area_mm2": float("inf")}
    bridge.store.update(run_id, summary={"markers": [{"marker": "CD8", "regions": [region]}]})
    shown = bridge.client.get(f"/runs/{run_id}", headers=auth)
    assert shown.status_code == 200, shown.text
    assert shown.json()["run"]["summary"]["markers"][0]["regions"] == [
        {"positive_fraction": None, "positive_area_mm2": 0.0, "tissue_area_mm2": None}
    ]

    missing = bridge.client.get("/runs/run-000000000000000000000000", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_run"
