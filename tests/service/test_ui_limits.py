"""/ui and the metrics show the UTC day's reserved credits against the daily limits (`workers.quotas`)."""

from __future__ import annotations

from html.parser import HTMLParser

from prometheus_client import REGISTRY

from tests.service.conftest import BridgeFactory
from workers.quotas import DailyCredits

ADMIN = "ui-admin-secret-0123"


class _Rows(HTMLParser):
    """The cells of the table inside `<section id="daily-limits">`, read by the standard library's parser."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.inside = ("id", "daily-limits") in attrs
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.inside = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_the_page_and_the_gauges_show_todays_use_against_the_limits(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN, BRIDGE_DAILY_CREDIT_LIMIT=50)
    daily = DailyCredits(bridge.store.client, prefix=bridge.store.prefix)
    daily.reserve("run-" + "a" * 24, "strand-default", 12, app_limit=None, bridge_limit=50)
    daily.reserve("run-" + "b" * 24, "strand-default", 5, app_limit=None, bridge_limit=50)

    page = bridge.client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"})
    assert page.status_code == 200
    parser = _Rows()
    parser.feed(page.text)
    rows = {row[0]: row[1:] for row in parser.rows if row}
    assert rows["All apps (BRIDGE_DAILY_CREDIT_LIMIT)"] == ["17", "50"]
    assert rows["App strand-default"] == ["17", "no limit"]
    assert REGISTRY.get_sample_value("bridge_daily_credits_used", {"app": "strand-default"}) == 17
    assert REGISTRY.get_sample_value("bridge_daily_credits_used_all") == 17
