"""What the core asks its adaptor to do."""

from typing import NamedTuple

Address = tuple[str, int]


def uri_host(host: str) -> str:
    """`host` as a SIP URI or Via writes it: an IPv6 address in brackets (RFC 3261 §25.1)."""
    return f"[{host}]" if ":" in host else host


def format_address(address: Address) -> str:
    """HOST:PORT as SIP writes it (sent-by, hostport): "[2001:db8::1]:5060", "192.0.2.1:5060"."""
    host, port = address
    return f"{uri_host(host)}:{port}"


class SendDatagram(NamedTuple):
    """Send `data` to `destination` from the service address (a tuple: cheap on the hot path).

    `data` is one whole SIP message (bytes). `destination` is (host, port): an IP literal
    (IPv6 without brackets) or, when it comes from a Via sent-by, a host name that the adaptor
    resolves (RFC 3263 §5); the core never resolves names.
    """

    data: bytes
    destination: Address
