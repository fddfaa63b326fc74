"""Callback URL allow-list: only exact origins and path prefixes on a segment boundary pass."""

from __future__ import annotations

import logging

import pytest

from sectra_adapter._errors import CallbackUrlRefused
from sectra_adapter._urls import check_callback_url, normalise_base_url

ALLOWED = ["https://pacs.hospital.example/SectraPathology/ia/v1", "https://pacs2.hospital.example:8443/"]


@pytest.mark.parametrize(
    "url",
    [
        "https://pacs.hospital.example/SectraPathology/ia/v1",
        "https://pacs.hospital.example/SectraPathology/ia/v1/",
        "https://pacs.hospital.example/SectraPathology/ia/v1/sub",
        "HTTPS://PACS.hospital.example/SectraPathology/ia/v1",
        "https://pacs.hospital.example:443/SectraPathology/ia/v1",
        "https://pacs2.hospital.example:8443/anything/here",
    ],
)
def test_urls_under_an_allowed_prefix_pass(url: str) -> None:
    check_callback_url(url, ALLOWED, allow_http=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://pacs.hospital.example/SectraPathology/ia/v10", "not under any prefix"),
        ("https://pacs.hospital.example/SectraPathology/ia", "not under any prefix"),
        ("https://pacs.hospital.example.evil.test/SectraPathology/ia/v1", "not under any prefix"),
        ("https://pacs.hospital.example:444/SectraPathology/ia/v1", "not under any prefix"),
        ("https://pacs2.hospital.example/anything", "not under any prefix"),
        ("https://pacs.hospital.example@evil.test/SectraPathology/ia/v1", "user info"),
        ("https://evil.test#@pacs.hospital.example/SectraPathology/ia/v1", "fragment"),
        ("https://pacs.hospital.example/SectraPathology/ia/v1#x", "fragment"),
        ("https://pacs.hospital.example/SectraPathology/ia/v1?redirect=evil", "query"),
        ("https://pacs.hospital.example/SectraPathology/ia/v1/../../admin", "'..'"),
        ("https://pacs.hospital.example/SectraPathology/ia/v1/%2e%2e/admin", "percent-encoding"),
        ("https://pacs.hospital.example/SectraPathology%2Fia/v1", "percent-encoding"),
        ("https://pacs.hospital.example\\@evil.test/SectraPathology/ia/v1", "backslashes"),
        ("https://pacs.hospital.example/SectraPathology/ia/v1 x", "whitespace"),
        ("https://pacs.hospital.example//SectraPathology/ia/v1", "empty"),
        ("https://pacs.hospital.exámple/SectraPathology/ia/v1", "non-ASCII"),
        ("ftp://pacs.hospital.example/SectraPathology/ia/v1", "https://"),
        ("//pacs.hospital.example/SectraPathology/ia/v1", "https://"),
        ("https:///SectraPathology/ia/v1", "no host"),
        ("https://pacs.hospital.example:99999/SectraPathology/ia/v1", "cannot be parsed"),
        ("http://pacs.hospital.example/SectraPathology/ia/v1", "SECTRA_ALLOW_HTTP"),
    ],
)
def test_everything_else_is_refused_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(CallbackUrlRefused) as refused:
        check_callback_url(url, ALLOWED, allow_http=False)
    assert why in refused.value.reason


def test_http_passes_only_when_allowed_and_listed() -> None:
    allowed = ["http://127.0.0.1:8001"]
    check_callback_url("http://127.0.0.1:8001/ia", allowed, allow_http=True)
    with pytest.raises(CallbackUrlRefused):
        check_callback_url("http://127.0.0.1:8001/ia", allowed, allow_http=False)
    with pytest.raises(CallbackUrlRefused, match="not under any prefix"):
        check_callback_url("https://127.0.0.1:8001/ia", allowed, allow_http=True)


def test_an_empty_allow_list_refuses_everything() -> None:
    with pytest.raises(CallbackUrlRefused, match="SECTRA_ALLOWED_CALLBACK_URLS is empty"):
        check_callback_url(ALLOWED[0], [], allow_http=False)


def test_a_malformed_allow_list_entry_never_matches_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(CallbackUrlRefused):
        check_callback_url("https://pacs.hospital.example/x", ["pacs.hospital.example"], allow_http=False)
    assert "ignoring malformed SECTRA_ALLOWED_CALLBACK_URLS entry" in caplog.text


def test_base_url_normalisation() -> None:
    assert (
        normalise_base_url(" https://PACS.example/ia/v1/ ", allow_http=False) == "https://pacs.example/ia/v1"
    )
    assert normalise_base_url("http://127.0.0.1:9/x", allow_http=True) == "http://127.0.0.1:9/x"
    for bad in (
        "http://pacs.example",
        "pacs.example/ia",
        "https://u:p@pacs.example",
        "https://pacs.example?a=1",
    ):
        with pytest.raises(CallbackUrlRefused):
            normalise_base_url(bad, allow_http=False)
