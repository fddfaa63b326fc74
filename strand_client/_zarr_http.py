"""A read-only zarr-python 3 store over Strand's authenticated result-file proxy.

The proxy serves one object per `GET /jobs/{id}/results/files/{key}` and
cannot list, so this store answers `get` (whole objects and byte ranges) and
nothing else. zarr runs every store call on its own event-loop thread and
fetches many chunks at once; all network I/O therefore lives in one
`httpx.AsyncClient` that is only ever used on that loop, behind a semaphore
that caps how hard we lean on the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

import httpx
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype

from strand_client._errors import StrandConnectionError
from strand_client._http import error_from_response
from strand_client._retry import RETRYABLE_STATUS, RetryableAnswer, RetryPolicy

_STREAM_CHUNK = 1 << 20
# A body at least this long is received into a mapping of its own, which goes back to the system as
# soon as the body is dropped. From glibc's heap, a freed ~14 MiB shard buffer raises malloc's mmap
# threshold to its size and every later one is carved from the heap, which keeps its high-water mark:
# the summariser's peak RSS was 175-203 MiB that way, 158-162 MiB now (bench/summarise.py).
_OWN_MAPPING_BYTES = 1 << 20
T = TypeVar("T")
Body = bytes | bytearray | mmap.mmap
"""An object's bytes as `ResultFetcher.get` gives them (a long one in its own anonymous mapping)."""


def as_bytes(body: Body) -> bytes | bytearray:
    """`body` as a type `json.loads` and file writes take (a document long enough for a mapping is copied)."""
    return bytes(body) if isinstance(body, mmap.mmap) else body


class ResultFetcher:
    """Fetches result objects by key: bounded concurrency, timeouts, and retries of these idempotent GETs.

    404 means "absent" (zarr reads an absent chunk as its fill value) and comes
    back as None; 408/429/5xx and transport failures are retried by the client's
    retry layer (jittered backoff, `Retry-After` as a floor); anything else is
    raised as the client's typed error.
    """

    def __init__(
        self,
        *,
        files_url: str,
        api_key: str,
        timeout: float,
        policy: RetryPolicy,
        concurrency: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.files_url = files_url.rstrip("/")
        self._policy = policy
        self._semaphore = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": "sectra-strand-bridge/results",
                "Accept-Encoding": "identity",  # chunks are zstd already; gzip on top only costs CPU
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ResultFetcher(files_url={self.files_url!r})"

    async def get(self, key: str, byte_range: ByteRequest | None = None) -> Body | None:
        """The object's bytes (or the requested range of them); None when the object does not exist."""
        headers = {"Range": _range_header(byte_range)} if byte_range is not None else {}

        async def once() -> Body | None:
            async with self._client.stream("GET", self._url(key), headers=headers) as response:
                await _raise_if_busy(response)
                return await _body(key, response, byte_range)

        async with self._semaphore:
            return await self._retried(key, once)

    async def download(self, key: str, dest: Path) -> bool:
        """Stream one object to `dest` (via a `.part` file, so a failure never leaves a torn copy).

        Returns False when the object does not exist. A transfer broken midway
        is started again from the first byte: the GET is idempotent.
        """
        part = dest.with_name(dest.name + ".part")

        async def once() -> bool:
            async with self._client.stream("GET", self._url(key)) as response:
                await _raise_if_busy(response)
                if response.status_code == 404:
                    return False
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response)
                await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
                handle = await asyncio.to_thread(part.open, "wb")
                try:
                    async for piece in response.aiter_bytes(_STREAM_CHUNK):
                        await asyncio.to_thread(handle.write, piece)
                finally:
                    await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, part, dest)
            return True

        async with self._semaphore:
            return await self._retried(key, once)

    async def _retried(self, key: str, once: Callable[[], Awaitable[T]]) -> T:
        """`once` through the client's retry layer; spent retries end as the client's typed errors."""
        try:
            return await self._policy.acall(
                once, lambda exc: isinstance(exc, httpx.TransportError | RetryableAnswer), what=f"GET {key}"
            )
        except RetryableAnswer as busy:
            raise error_from_response(busy.response) from None
        except httpx.TransportError as exc:
            raise StrandConnectionError(
                f"Result file {key} could not be fetched after {self._policy.max_retries + 1} attempts "
                f"({type(exc).__name__})"
            ) from exc

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self, key: str) -> str:
        return f"{self.files_url}/{key}"


async def _raise_if_busy(response: httpx.Response) -> None:
    """A 408/429/5xx answer is retried; its body is read first so the last one can still be mapped."""
    if response.status_code in RETRYABLE_STATUS:
        await response.aread()
        raise RetryableAnswer(response)


def _range_header(byte_range: ByteRequest) -> str:
    if isinstance(byte_range, RangeByteRequest):
        return f"bytes={byte_range.start}-{max(byte_range.start, byte_range.end - 1)}"
    if isinstance(byte_range, OffsetByteRequest):
        return f"bytes={byte_range.offset}-"
    return f"bytes=-{byte_range.suffix}"


async def _body(key: str, response: httpx.Response, byte_range: ByteRequest | None) -> Body | None:
    """The requested bytes from a final answer; a server that ignored `Range` (200) is sliced here."""
    status = response.status_code
    if status == 404:
        return None
    if status == 416:  # range starts past the end: zarr's contract for that is "no bytes"
        return b""
    if status >= 400:
        await response.aread()
        raise error_from_response(response)
    data = await _read_into_one_buffer(response)
    if byte_range is None or status == 206:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :] if byte_range.suffix else b""
    raise TypeError(f"unsupported byte range {byte_range!r} for {key}")


async def _read_into_one_buffer(response: httpx.Response) -> Body:
    """The body, received straight into one buffer of its announced length.

    Shards run to ~16 MiB; collecting the pieces and joining them (what
    `response.aread()` does) holds every shard twice at its peak. A long body
    gets an anonymous private mapping (`_OWN_MAPPING_BYTES`).
    """
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit() or response.headers.get("Content-Encoding"):
        return await response.aread()
    size = int(length)
    buffer: Body = _own_mapping(size) if size >= _OWN_MAPPING_BYTES else bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for piece in response.aiter_raw():
        view[filled : filled + len(piece)] = piece
        filled += len(piece)
    if filled != len(buffer):
        raise httpx.RemoteProtocolError(f"body ended after {filled} of {len(buffer)} bytes")
    return buffer


def _own_mapping(size: int) -> mmap.mmap:
    """`size` bytes of anonymous private memory, backed by huge pages where the kernel has them: a fresh
    mapping is faulted in page by page, ~15 % of the summariser's time with 4 KiB pages, and a few
    percent with 2 MiB ones (bench/summarise.py)."""
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
    if advice is not None:
        with contextlib.suppress(OSError):  # a kernel built without transparent huge pages
            mapping.madvise(advice)
    return mapping


class HttpResultsStore(Store):
    """zarr `Store` over the result-file proxy: read-only, cannot list, absent key = fill value."""

    def __init__(self, fetcher: ResultFetcher) -> None:
        super().__init__(read_only=True)
        self._fetcher = fetcher

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpResultsStore) and other._fetcher is self._fetcher

    def __hash__(self) -> int:
        return id(self._fetcher)

    def __repr__(self) -> str:
        return f"HttpResultsStore({self._fetcher.files_url!r})"

    @property
    def supports_writes(self) -> bool:
        return False

    @property
    def supports_deletes(self) -> bool:
        return False

    @property
    def supports_listing(self) -> bool:
        return False

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        data = await self._fetcher.get(key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(memoryview(data))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await self._fetcher.get(key, RangeByteRequest(0, 1)) is not None

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    def list(self) -> AsyncIterator[str]:
        return _CannotList()

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return _CannotList()

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return _CannotList()


class _CannotList(AsyncIterator[str]):
    """What listing yields here: an error saying why, at the first step."""

    async def __anext__(self) -> str:
        raise NotImplementedError("Strand's result-file proxy cannot list keys; read paths from the manifest")
