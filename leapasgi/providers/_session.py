"""The pooled aiohttp session of one upstream, opened one way for every client of it (the
provider, its batch client): the address connected to is checked, no cookies, no proxy from
the environment, and connects bounded by the provider's connect clock."""

from __future__ import annotations

import aiohttp
from aiohttp.abc import AbstractResolver

from .settings import ProviderSettings
from .urls import GuardedResolver

__all__ = ["KEEPALIVE_SECONDS", "UpstreamSession"]

KEEPALIVE_SECONDS = 30.0


class UpstreamSession:
    """One aiohttp session for ``settings``' upstream, opened on first ``get()`` (again after
    it was closed) and closed by ``aclose()``."""

    def __init__(self, settings: ProviderSettings, resolver: AbstractResolver | None) -> None:
        self._settings = settings
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        """The open session, opening one when there is none."""
        session = self._session
        if session is None or session.closed:
            settings = self._settings
            connector = aiohttp.TCPConnector(
                limit=settings.max_connections,
                keepalive_timeout=KEEPALIVE_SECONDS,
                # The address connected to is checked, not only the URL's spelling.
                resolver=GuardedResolver(self._resolver),
            )
            timeout = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=settings.timeouts.connect
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=True,
            )
            self._session = session
        return session

    async def aclose(self) -> None:
        """Close the pooled connections; the next ``get()`` opens a new pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
