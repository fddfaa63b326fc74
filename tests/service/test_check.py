"""`sectra-bridge check` against real servers: it names what is wrong, in words, and exits non-zero."""

from __future__ import annotations

from click.testing import CliRunner
from sectra_client.mock_server import MockSectraServer

from service.cli import main
from strand_client.testing import FakeStrandServer
from workers.settings import get_settings


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["check", *args], env=env)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def test_check_lists_markers_strand_does_not_offer_and_never_prints_secrets(redis_url: str) -> None:
    with FakeStrandServer(entitled_markers=frozenset({"CD8", "PanCK"})) as strand:
        code, output = _run(
            {
                "REDIS_URL": redis_url,
                "STRAND_API_KEY": strand.api_key,
                "STRAND_BASE_URL": strand.url,
                "SECTRA_ALLOWED_CALLBACK_URLS": "https://pacs.example.org/ia",
                "BRIDGE_WEBHOOK_TOKEN": "webhook-secret-xyz",
            }
        )
    assert code == 1
    assert "app strand-default: Strand does not offer Ki67 to this organisation" in output
    assert "ok       Redis answers" in output
    assert strand.api_key not in output and "webhook-secret-xyz" not in output


def test_check_passes_a_complete_configuration_and_reaches_sectra(redis_url: str) -> None:
    sectra = MockSectraServer(token="sectra-token-abc")
    sectra.run(port=0, host="127.0.0.1")
    try:
        with FakeStrandServer() as strand:
            code, output = _run(
                {
                    "REDIS_URL": redis_url,
                    "STRAND_API_KEY": strand.api_key,
                    "STRAND_BASE_URL": strand.url,
                    "SECTRA_ALLOWED_CALLBACK_URLS": sectra.url,
                    "SECTRA_ALLOW_HTTP": "true",
                    "BRIDGE_WEBHOOK_TOKEN": "webhook-secret-xyz",
                },
                "--sectra-url",
                sectra.url,
                "--sectra-token",
                "sectra-token-abc",
            )
    finally:
        sectra.stop()
    assert code == 0, output
    assert "Sectra answers" in output and "IA-API 1.10" in output
    assert "PROBLEM" not in output
    assert "sectra-token-abc" not in output


def test_check_reports_an_unreachable_redis_and_an_empty_allow_list() -> None:
    code, output = _run({"REDIS_URL": "redis://127.0.0.1:1/0", "SECTRA_ALLOWED_CALLBACK_URLS": ""})
    assert code == 1
    assert "Redis does not answer" in output
    assert "SECTRA_ALLOWED_CALLBACK_URLS is empty" in output
    assert "STRAND_API_KEY is not set" in output
