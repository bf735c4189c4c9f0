"""Which callback URLs taskqueue may POST to: the SSRF guard of completion webhooks.

A callback URL comes from whoever may enqueue, and the exporter, inside the cluster, sends to it. Unguarded,
a client could make it POST to the cloud's metadata service (169.254.169.254), to Redis, or to any pod. So
``TASKQUEUE_WEBHOOK_ALLOWED_HOSTS`` lists what may receive, and every URL is checked twice:

- **At enqueue** (:meth:`AllowList.check_url`): an ``http``/``https`` URL without credentials, whose host is a
  listed name (``hooks.example.com``; ``*.example.com`` for its subdomains) or an IP address inside a listed
  network (``10.0.0.0/8``; a bare address is that one address). An empty list refuses every callback.
- **At delivery** (:meth:`AllowList.resolve`): the host is resolved, and every address it resolves to must be
  inside a listed network, or a public (global) address of a listed name. A name that resolves to a private,
  loopback or link-local address (DNS rebinding, ``localhost``, a decimal IP such as ``2852039166``) is
  refused unless that network is listed. The POST then goes to the checked address, and no redirect is
  followed, so what was checked is what is reached.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
SCHEMES = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(ValueError):
    """A callback URL taskqueue will not send to; the message says why, for the client."""


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL's parts, and the checked address to connect to."""

    scheme: str
    host: str  # as in the URL: the Host header, TLS's server name
    port: int
    path: str  # with its query
    address: str  # the resolved, allowed IP address


def _network(entry: str) -> Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class AllowList:
    """``TASKQUEUE_WEBHOOK_ALLOWED_HOSTS``, parsed: names, ``*.`` suffixes and networks."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".example.com" of "*.example.com"
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AllowList:
        """Parse the entries; a malformed one raises ValueError (the setting is refused at start)."""
        names, suffixes, networks = set(), [], []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            network = _network(entry)
            if network is not None:
                networks.append(network)
            elif entry.startswith("*.") and _is_name(entry[2:]):
                suffixes.append(entry[1:])
            elif _is_name(entry) and "*" not in entry:
                names.add(entry)
            else:
                raise ValueError(f"webhook_allowed_hosts: {raw!r} is neither a host name, *.name, an IP nor a CIDR")
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    @property
    def enabled(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def _name_listed(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def _address_listed(self, address: Address) -> bool:
        return any(address in n for n in self.networks if n.version == address.version)

    def check_url(self, url: object) -> SplitResult:
        """The parsed URL if a callback may go to it (the check at enqueue), else :class:`UrlRefused`."""
        if not self.enabled:
            raise UrlRefused("webhooks are off: TASKQUEUE_WEBHOOK_ALLOWED_HOSTS lists no host")
        if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
            raise UrlRefused(f"callbackUrl must be a URL of at most {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UrlRefused("callbackUrl is not a valid URL") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise UrlRefused("callbackUrl must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise UrlRefused("callbackUrl must not carry credentials (user:password@)")
        if not url.isascii() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            raise UrlRefused(
                "callbackUrl must be ASCII without spaces or control characters (an international name: its xn-- form)"
            )
        if port == 0:
            raise UrlRefused("callbackUrl has port 0")
        host = parts.hostname.rstrip(".")
        address = _address(host)
        if address is not None:
            if not self._address_listed(address):
                raise UrlRefused(f"callbackUrl's address {host} is not in TASKQUEUE_WEBHOOK_ALLOWED_HOSTS")
        elif not _is_name(host) or not self._name_listed(host):
            raise UrlRefused(f"callbackUrl's host {host} is not in TASKQUEUE_WEBHOOK_ALLOWED_HOSTS")
        return parts

    def resolve(self, url: str, getaddrinfo: Callable[..., list] = socket.getaddrinfo) -> Target:
        """Check ``url`` again and resolve its host: the address to send to (the check at delivery).

        :class:`UrlRefused` when the URL or any address its host resolves to is not allowed; OSError when the
        name does not resolve (a retryable failure, as a connection error is).
        """
        parts = self.check_url(url)
        host = parts.hostname.rstrip(".")  # type: ignore[union-attr]  # check_url made sure there is one
        port = parts.port or SCHEMES[parts.scheme]
        literal = _address(host)
        infos = [(0, 0, 0, "", (str(literal), port))] if literal is not None else getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )  # fmt: skip
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        for address in addresses:
            listed = self._address_listed(address) or (literal is None and _public(address))
            if not listed:
                raise UrlRefused(
                    f"{host} resolves to {address}, which is not public and not in TASKQUEUE_WEBHOOK_ALLOWED_HOSTS"
                )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(parts.scheme, host, port, path, str(addresses[0]))


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _public(address: Address) -> bool:
    """Whether ``address`` is public (global). An IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4,
    Teredo, NAT64) is judged by the IPv4 address it reaches, so a name cannot reach 169.254.169.254 or a
    private network through a translating gateway; the deprecated IPv4-compatible form never is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in IPV4_COMPATIBLE:
            return False
        teredo = address.teredo
        embedded = address.ipv4_mapped or address.sixtofour or (teredo[1] if teredo else None)
        if embedded is None and any(address in n for n in NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return _public(embedded)
    return address.is_global


def _is_name(entry: str) -> bool:
    """A DNS host name: dot-separated labels of letters, digits and hyphens."""
    labels = entry.split(".")
    return all(0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels)
