"""Real servers for the Sectra adapter tests: the package's MockSectraServer, small ASGI apps, raw sockets.

Everything listens on 127.0.0.1, port 0. Raw socket servers exist for what an
ASGI server will not send: bodies shorter than their Content-Length, or a
connection dropped mid-body. Helpers are fixtures because test directories are
not packages here (a `sectra_adapter` test package would shadow the real one).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
import uvicorn
from sectra_client.mock_server import MockSectraServer

TOKEN = "test-token-3f9a"


@contextmanager
def _serve_asgi(app: object, port: int = 0) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, fd=sock.fileno(), log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class RawServer:
    """Answers each connection with bytes from `respond(request_head, index)`, then closes it."""

    def __init__(self, respond: Callable[[bytes, int], bytes]) -> None:
        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    head += data
                outer.requests.append(head)
                self.request.sendall(respond(head, len(outer.requests) - 1))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def mock_sectra() -> Iterator[MockSectraServer]:
    server = MockSectraServer(token=TOKEN)
    server.run(port=0, host="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def serve_asgi() -> Iterator[Callable[..., str]]:
    """`serve_asgi(app, port=0) -> base URL`; every server started is stopped after the test."""
    with ExitStack() as stack:
        yield lambda app, port=0: stack.enter_context(_serve_asgi(app, port))


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[bytes, int], bytes]], RawServer]]:
    """`raw_server(respond) -> RawServer` (started; stopped after the test)."""
    with ExitStack() as stack:
        yield lambda respond: stack.enter_context(RawServer(respond))


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sleeps(list[float]):
    """Stands in for `time.sleep` in retry tests: records each backoff instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()
