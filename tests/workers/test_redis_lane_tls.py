"""`RedisLane.like` a `rediss://` client: TLS to a real TLS-only `redis-server`, trusted as the client is.

The oracle is the blocking redis-py client with the same settings: the lane must connect where it
connects and refuse where it refuses (a server certificate no configured CA signed).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from workers.redis_lane import RedisLane


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server on a free port, its certificate signed by a CA of this test's own."""
    exe, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if exe is None or openssl is None:
        pytest.fail("this test needs redis-server and openssl on PATH")
    where = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=lane-test-ca", cwd=where)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=where)  # fmt: skip
    (where / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=where)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    tls = ["--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt"]
    proc = subprocess.Popen(
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", *tls, "--tls-auth-clients", "no"],
        cwd=where, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    probe = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=str(where / "ca.crt"))
    deadline = time.monotonic() + 20
    while True:
        try:
            probe.ping()
            break
        except redis.RedisError:
            assert proc.poll() is None, "redis-server exited at start (built without TLS?)"
            assert time.monotonic() < deadline, "the TLS redis-server did not start"
            time.sleep(0.05)
    try:
        yield port, where / "ca.crt"
    finally:
        probe.close()
        proc.terminate()
        proc.wait(timeout=20)


def _ping(client: redis.Redis) -> bytes:
    async def main() -> bytes:
        lane = RedisLane.like(client)
        try:
            reply: bytes = await lane.execute("PING")
            return reply
        finally:
            await lane.close()

    return asyncio.run(main())


def test_a_lane_speaks_tls_where_its_client_does(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    client = redis.Redis.from_url(f"rediss://localhost:{port}/0", ssl_ca_certs=str(ca))
    assert client.ping() is True
    assert _ping(client) == b"PONG"


def test_a_lane_refuses_a_server_its_client_refuses(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    client = redis.Redis.from_url(f"rediss://localhost:{port}/0", socket_connect_timeout=2)  # system CAs only
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(redis.ConnectionError):
        _ping(client)
