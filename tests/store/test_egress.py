"""Where the service may send a request on a user's say-so (issue #11, item 7): never to
loopback, private, link-local, reserved, multicast or cloud-metadata addresses, judged on every
address the host resolves to, unless the operator's allow-list names the host or the address."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from store import egress
from store.egress import EgressRefused, parse_allow, resolve_target

NOTHING = parse_allow("")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/internal-admin",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",  # Alibaba's metadata, in the shared address space
        "http://localhost:9000/hook",
        "http://[::1]:9000/hook",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:80/",
        "http://224.0.0.1/",
        "http://2130706433/",  # 127.0.0.1 as one number
    ],
)
def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(EgressRefused) as info:
        resolve_target(url, NOTHING)
    assert "DISTILLERY_WEBHOOK_ALLOW" in str(info.value)


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> None:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            try:  # an address resolves to itself
                table[host] = [str(ipaddress.ip_address(host))]
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in table[host]
        ]

    monkeypatch.setattr(egress, "getaddrinfo", getaddrinfo)


def test_a_public_host_resolves_to_addresses_to_connect_to(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07::1"]})
    target = resolve_target("https://hooks.example.com/in?x=1", NOTHING)
    assert target.host == "hooks.example.com" and target.port == 443
    assert [str(a) for a in target.addresses] == ["93.184.215.14", "2606:2800:21f:cb07::1"]
    assert target.pinned_url(target.addresses[1]) == "https://[2606:2800:21f:cb07::1]:443/in?x=1"


def test_one_internal_address_among_public_ones_is_enough_to_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"mixed.example.com": ["93.184.215.14", "10.0.0.7"]})
    with pytest.raises(EgressRefused, match=r"10\.0\.0\.7"):
        resolve_target("https://mixed.example.com/", NOTHING)


def test_an_unresolvable_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    with pytest.raises(EgressRefused, match="resolve"):
        resolve_target("https://nowhere.example.com/", NOTHING)


def test_the_allow_list_names_hosts_and_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.internal": ["10.0.0.5"], "other.internal": ["10.9.0.1"]})
    allow = parse_allow(" hooks.internal , 127.0.0.1, 192.168.0.0/16,::1 ")
    assert [str(a) for a in resolve_target("http://HOOKS.internal./x", allow).addresses] == [
        "10.0.0.5"
    ]
    for url in ("http://127.0.0.1:1/", "http://192.168.7.7/", "http://[::1]:5/"):
        resolve_target(url, allow)
    with pytest.raises(EgressRefused):
        resolve_target("http://other.internal/", allow)
    with pytest.raises(EgressRefused):
        resolve_target("http://127.0.0.2/", allow)


def test_metadata_needs_its_own_entry_not_a_wide_network() -> None:
    with pytest.raises(EgressRefused, match="metadata"):
        resolve_target("http://169.254.169.254/", parse_allow("169.254.0.0/16,0.0.0.0/0"))
    resolve_target("http://169.254.169.254/", parse_allow("169.254.169.254"))


def test_a_bad_allow_list_entry_is_an_error_not_ignored() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_allow("10.0.0.0/33")


def test_only_http_and_https() -> None:
    with pytest.raises(EgressRefused, match="scheme"):
        resolve_target("ftp://93.184.215.14/", NOTHING)
    assert ipaddress.ip_address("93.184.215.14").is_global
