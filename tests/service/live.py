"""`sectra-bridge serve` as a child process on a free port, and a raw-socket HTTP/1.1 reader.

The tests of the HTTP layer talk to the very command a deployment runs, over plain sockets, so
nothing between them and the server (no client library) fixes up what they send. Responses are
parsed by h11, an HTTP/1.1 implementation independent of the server's own parser (httptools).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import httpx
import redis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """A server orphaned by a killed test run would hold its port; Linux ends it for us."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServeProcess:
    """`sectra-bridge serve --host 127.0.0.1 --port P` with the given environment; its log kept."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        exe = Path(sys.executable).parent / "sectra-bridge"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env={**os.environ, **env},
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sectra-bridge serve exited at start:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sectra-bridge serve did not answer in 30 s:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _client(method: str) -> h11.Connection:
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))  # h11's bookkeeping only
    conn.send(h11.EndOfMessage())
    return conn


def _next_response(conn: h11.Connection, more: Callable[[], bytes]) -> RawResponse | None:
    status, headers, body = 0, {}, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = more()
            conn.receive_data(data)
            if not data and status == 0:
                return None
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {name.decode().lower(): value.decode("latin-1") for name, value in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return RawResponse(status, headers, bytes(body))


def read_response(sock: socket.socket, method: str = "GET", timeout: float = 10.0) -> RawResponse | None:
    """The next response on `sock` (parsed by h11), or None when the server closed or reset first."""
    sock.settimeout(timeout)

    def more() -> bytes:
        try:
            return sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    return _next_response(_client(method), more)


def parse_response(raw: bytes, method: str = "GET") -> RawResponse | None:
    """The response in bytes already received (then the connection's end), parsed by h11."""
    pending = [raw, b""]
    return _next_response(_client(method), lambda: pending.pop(0) if pending else b"")


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server ends the connection (EOF or reset) within `timeout`, reading whatever comes."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def status_summary(label: str, statuses: Counter[int]) -> str:
    """ "label: N requests; {'2xx': a, '4xx': b}; {200: a, 400: ...}" for a test's closing line."""
    classes = Counter(f"{status // 100}xx" for status in statuses.elements())
    total = sum(statuses.values())
    return f"{label}: {total} requests; {dict(sorted(classes.items()))}; {dict(sorted(statuses.items()))}"


def assert_json_error(response: RawResponse | None, status: int, code: str | None = None) -> dict[str, Any]:
    """Our error shape: the status, `application/json`, and exactly `error` and `message`."""
    assert response is not None, "the server closed the connection without an answer"
    assert response.status == status, (response.status, response.body[:300])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


APPS_YAML = """
strand-default:
  display_name: "Strand marker panel: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
strand-notify:
  display_name: "Strand on new H&E slides"
  markers: [CD8]
  start_on_new_images: true
"""
ADMIN_TOKEN = "admin-token-for-the-live-tests-0123"
KEY_SCAN = "*"


@dataclass
class LiveBridge:
    """`sectra-bridge serve` with a real Redis database of its own and Sectra's mock as the callback."""

    server: ServeProcess
    sectra: Any  # tests.service.conftest.RecordingSectra
    redis: redis.Redis

    @property
    def url(self) -> str:
        return self.server.url

    def keys(self) -> set[bytes]:
        """Every key in the bridge's database: runs, audit trails, leases, indexes, the queue."""
        return set(self.redis.scan_iter(KEY_SCAN, count=1000))


@contextmanager
def live_bridge(redis_url: str, work: Path, db: int) -> Iterator[LiveBridge]:
    """Start the mock Sectra, then the bridge on database `db` (flushed first: the database is the test's)."""
    from tests.service.conftest import RecordingSectra

    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    sectra = RecordingSectra()
    sectra.run(port=0, host="127.0.0.1")
    apps = work / "apps.yaml"
    apps.write_text(APPS_YAML)
    env = {
        "REDIS_URL": url,
        "BRIDGE_APPS_FILE": str(apps),
        "BRIDGE_WORK_DIR": str(work / "work"),
        "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SECTRA_ALLOWED_CALLBACK_URLS": sectra.url,
        "SECTRA_ALLOW_HTTP": "true",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    try:
        server = ServeProcess(env, work / "serve.log")
    except BaseException:
        sectra.stop()
        raise
    try:
        yield LiveBridge(server, sectra, client)
    finally:
        server.stop()
        sectra.stop()
        client.flushdb()
        client.close()
