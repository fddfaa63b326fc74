"""The outbound proxy the environment names for a URL, and an httpx transport that takes it.

`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case) are read as curl, urllib
and requests read them (`urllib.request.getproxies_environment` / `proxy_bypass_environment`):
the scheme's own proxy, else `ALL_PROXY`; none for a host `NO_PROXY` names (`*`, a host, a
domain suffix, optionally with a port).

httpx reads these variables only when it makes its transport itself, and every client here is
given one (to count calls, to share a pool, to read bodies through urllib3), so without this
module the hospital proxy a deployment configures (the Helm chart's `proxy.https`) reached no
request at all: Strand's API, the uploads and Sectra's calls all went direct, and only the
results reader (no transport of its own) used it.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx


class EnvironmentProxies:
    """The proxies of this process's environment, read once (a pod's environment is fixed)."""

    def __init__(self) -> None:
        found = urllib.request.getproxies_environment()
        self._no = found.pop("no", "")
        # A proxy given without a scheme ("proxy:3128") is an HTTP proxy, as curl takes it.
        self._by_scheme = {scheme: _with_scheme(url) for scheme, url in found.items() if url}

    def __bool__(self) -> bool:
        """Some proxy is configured (for some scheme)."""
        return bool(self._by_scheme)

    def for_url(self, url: str) -> str | None:
        """The proxy URL for a request to `url`, or None to go direct."""
        if not self._by_scheme:
            return None
        parts = urlsplit(url)
        proxy = self._by_scheme.get(parts.scheme) or self._by_scheme.get("all")
        if proxy is None:
            return None
        host = parts.hostname or ""
        where = f"{host}:{parts.port}" if parts.port else host
        # The stdlib's NO_PROXY matcher (what `urllib.request.proxy_bypass` runs on every platform when
        # NO_PROXY is set; typeshed does not list it).
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if self._no and bypass(where, {"no": self._no}):
            return None
        return proxy


def _with_scheme(url: str) -> str:
    return url if "://" in url else f"http://{url}"


class ProxyRoutedTransport(httpx.BaseTransport):
    """Each request direct or through its proxy (`EnvironmentProxies.for_url`), on a transport per
    route that `make(proxy_url or None)` builds on first use; thread-safe."""

    def __init__(
        self,
        make: Callable[[str | None], httpx.BaseTransport],
        proxies: EnvironmentProxies | None = None,
    ) -> None:
        self._make = make
        self._proxies = proxies if proxies is not None else EnvironmentProxies()
        self._routes: dict[str | None, httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxies.for_url(str(request.url)) if self._proxies else None
        transport = self._routes.get(proxy)
        if transport is None:
            with self._lock:
                transport = self._routes.get(proxy)
                if transport is None:
                    transport = self._routes[proxy] = self._make(proxy)
        return transport.handle_request(request)

    def close(self) -> None:
        with self._lock:
            routes, self._routes = list(self._routes.values()), {}
        for transport in routes:
            transport.close()


def proxy_aware_transport(limits: httpx.Limits | None = None) -> ProxyRoutedTransport:
    """httpx's own transport (with `limits`), direct or through the environment's proxy."""

    def make(proxy: str | None) -> httpx.BaseTransport:
        if limits is None:
            return httpx.HTTPTransport(proxy=proxy)
        return httpx.HTTPTransport(limits=limits, proxy=proxy)

    return ProxyRoutedTransport(make)
