"""Where the service may connect on a user's say-so (a job's webhook URL): the egress rules.

A webhook URL makes the service's own machines open a connection, so without rules anyone who
may submit a job can make them POST to the service's network: loopback, private ranges,
link-local addresses, the cloud metadata service (169.254.169.254). A URL is allowed when every
address its host resolves to is public (`is_global`, not multicast; an IPv6 address that embeds
an IPv4 one is judged by that one too), or when the operator's allow-list
(DISTILLERY_WEBHOOK_ALLOW: host names, addresses, CIDRs) admits the host or each address. A
metadata address is admitted only by an entry naming it exactly, never by a wide range such as
169.254.0.0/16 or 0.0.0.0/0.

The check returns the addresses it judged, and the sender connects to one of them
(`Target.pinned_url`, sent with the URL's own Host header and TLS server name): a DNS answer
that changes between the check and the connection (DNS rebinding) cannot redirect the request.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from urllib.parse import urlsplit

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

ALLOW_SETTING = "DISTILLERY_WEBHOOK_ALLOW"
#: the instance metadata services of AWS (IPv4, IPv6), GCP and Azure (the IPv4 one), Alibaba
METADATA = frozenset(
    ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
NAT64 = ip_network("64:ff9b::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")

#: the resolver; tests replace it to control what a name resolves to
getaddrinfo = socket.getaddrinfo


class EgressRefused(ValueError):
    """The service may not connect there; the message says why and how to allow it."""


class Unresolvable(EgressRefused):
    """The host does not resolve (now): worth another try later, unlike a refusal."""


@dataclass(frozen=True)
class Allow:
    """The operator's allow-list: host names, and networks (an address is a /32 or /128)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def admits(self, address: Address) -> bool:
        if address in METADATA:
            return any(n.num_addresses == 1 and address in n for n in self.networks)
        return any(address in n for n in self.networks)


def parse_allow(text: str) -> Allow:
    """`text` is comma-separated host names, addresses and CIDRs; a malformed entry is a
    `ValueError` (a typo must not silently allow nothing, or too much)."""
    hosts: set[str] = set()
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        if "/" in entry or not _HOST_NAME.match(entry):
            raise ValueError(
                f"{ALLOW_SETTING}: {raw.strip()!r} is neither a host name nor an address or CIDR"
            )
        hosts.add(entry)
    return Allow(frozenset(hosts), tuple(networks))


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to one of `addresses`, never to what the host resolves to later."""

    scheme: str
    host: str
    port: int
    path: str  # with the query
    addresses: tuple[Address, ...]

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if DEFAULT_PORTS[self.scheme] == self.port else f"{name}:{self.port}"

    def pinned_url(self, address: Address) -> str:
        at = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{at}:{self.port}{self.path}"


def resolve_target(url: str, allow: Allow) -> Target:
    """Resolve `url`'s host and judge every address; `EgressRefused` (`Unresolvable` when the
    host does not resolve) saying why."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise EgressRefused(f"scheme {parts.scheme!r} is not allowed; use http or https")
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise EgressRefused(f"{url!r} has an invalid port") from None
    if not host:
        raise EgressRefused(f"{url!r} has no host")
    addresses = _resolve(host, port)
    if host not in allow.hosts:
        for address in addresses:
            reason = internal_reason(address)
            if reason and not allow.admits(address):
                shown = host if host == str(address) else f"{host} resolves to {address}, which"
                raise EgressRefused(
                    f"{shown} is {reason}; the service does not send webhooks into its own "
                    f"network unless its operator allows the receiver ({ALLOW_SETTING})"
                )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, addresses)


def internal_reason(address: Address) -> str | None:
    """Why `address` is not a public one (None when it is)."""
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address.teredo is not None:
            embedded = address.teredo[1]
        if address in NAT64:
            embedded = IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (reason := internal_reason(embedded)):
            return reason
    checks = (
        (address in METADATA, "a cloud metadata address"),
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _resolve(host: str, port: int) -> tuple[Address, ...]:
    """Every address `host` resolves to, in the resolver's order, each once."""
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve {host}: {exc}") from None
    found: dict[Address, None] = {}
    for info in infos:
        found[ip_address(str(info[4][0]).split("%", 1)[0])] = None  # a scope id: fe80::1%eth0
    if not found:
        raise Unresolvable(f"{host} resolves to no address")
    return tuple(found)
