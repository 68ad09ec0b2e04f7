"""Where a provider may send requests: http(s) URLs, never link-local or cloud metadata hosts.

Checked twice: on the spelling wherever a provider's base URL is set (a config file or code),
and on the address actually connected to (``GuardedResolver``), since a name such as
``169.254.169.254.nip.io`` resolves to a metadata address whatever it looks like. No
configuration can turn the gateway into a way of reading a cloud instance's credentials.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = ["ForbiddenAddressError", "GuardedResolver", "check_base_url", "forbidden_address"]

_HTTP_URL = re.compile(r"^https?://[^/\s?#]+")
# Never an upstream: cloud metadata services hand out credentials to whoever asks. Loopback and
# private LAN addresses stay allowed (Ollama, vLLM, tests); link-local ones never are.
_METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, Oracle, DigitalOcean...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud (legacy)
    }
)


def check_base_url(value: str) -> str:
    """An http(s) URL whose host is not link-local and not a cloud metadata service.

    Hosts are judged as the connector would read them: IPv4 in any inet_aton form
    (``2852039166``, ``0xa9fea9fe``), IPv4-mapped IPv6, IDNA names. Messages never echo the URL,
    which may carry a key in its query.
    """
    if not _HTTP_URL.match(value) or any(c.isspace() or c in "\\\0" for c in value):
        raise ValueError("base_url must be an http:// or https:// URL")
    try:
        host = urllib.parse.urlsplit(value).hostname or ""
        host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except (ValueError, UnicodeError):
        raise ValueError("base_url must have a valid host name") from None
    if not host or "%" in host:
        raise ValueError("base_url must have a valid host name")
    address = _ip_address(host)
    if host in _METADATA_HOSTS or address in _METADATA_ADDRESSES:
        raise ValueError("base_url points at a cloud metadata service; refused")
    if address is not None and forbidden_address(address):
        raise ValueError(
            "base_url points at a link-local or multicast address; refused (cloud metadata "
            "services live in 169.254.0.0/16 and fe80::/10)"
        )
    return value


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address no upstream may have: link-local, multicast, cloud metadata."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_link_local or address.is_multicast or address in _METADATA_ADDRESSES


class ForbiddenAddressError(OSError):
    """Raised by ``GuardedResolver`` for a name that resolves only to forbidden addresses."""


class GuardedResolver(AbstractResolver):
    """A resolver that drops the addresses no upstream may have, so the refusal holds for the
    address actually connected to, not only for the spelling of the URL. Loopback and LAN
    addresses pass (Ollama, vLLM)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses ``host`` resolves to, minus the forbidden ones."""
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not forbidden_address(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise ForbiddenAddressError(
                "the host resolves only to link-local, multicast or cloud metadata addresses"
            )
        return allowed

    async def close(self) -> None:
        """Close the resolver it wraps."""
        await self._inner.close()


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            # getaddrinfo takes "2852039166" or "0251.0376.0251.0376" for 169.254.169.254.
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
