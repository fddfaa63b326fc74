"""A Redis-protocol server in this process for the demo: fakeredis over TCP.

fakeredis' TCP handler drops the connection after any error reply, so a
routine `NOSCRIPT` (redis-py's cue to load a Lua script) kills the client's
connection mid-command. This handler answers the error and keeps serving, as
a real Redis does.
"""

from __future__ import annotations

import select
import threading

from fakeredis import TcpFakeServer
from fakeredis._clients._tcp_server import TCPFakeRequestHandler

_POLL_SECONDS = 0.1


class _KeepAliveHandler(TCPFakeRequestHandler):
    def handle(self) -> None:
        while not self.server._shutdown_event.is_set():
            try:
                if self.current_client.can_read():
                    self.writer.dump(self.current_client.read_response())
                    continue
                data = self.rfile.readline()
                if data == b"":
                    readable, _, _ = select.select([self.connection], [], [], _POLL_SECONDS)
                    if not readable:
                        continue
                    data = self.rfile.readline()
                    if data == b"":
                        break
                self.current_client.get_socket().sendall(data)
            except ConnectionError:
                break
            except Exception as exc:  # an error *reply*, not a broken connection
                self.writer.dump(exc)


class DemoRedis:
    """Start on a free loopback port; `url` is a plain `redis://` URL."""

    def __init__(self) -> None:
        self._server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        self._server.RequestHandlerClass = _KeepAliveHandler
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-redis", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"redis://{host!s}:{port}/0"

    def start(self) -> DemoRedis:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
