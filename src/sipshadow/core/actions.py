"""What the core asks its adaptor to do."""

from typing import NamedTuple

Address = tuple[str, int]

#: Transports, as a URI's `transport` parameter writes them (RFC 3261 §19.1.1); a Via's
#: sent-protocol writes them in capitals (§20.42).
UDP = "udp"
TCP = "tcp"
#: §18.1.1: a request larger than this goes over a congestion-controlled transport when the
#: path MTU is unknown.
UDP_REQUEST_LIMIT_BYTES = 1300
#: A request moved to TCP for its size goes over UDP after all, when the member refuses the
#: connection, only up to this size: past it IPv4 cuts the datagram into a dozen fragments or
#: more, one loss loses it all, and real UAS break on it (SIPp 3.6.1 dies on 64 KB requests
#: that live fuzzing made). Beyond it, the request is dropped.
UDP_FALLBACK_LIMIT_BYTES = 16384


def uri_host(host: str) -> str:
    """`host` as a SIP URI or Via writes it: an IPv6 address in brackets (RFC 3261 §25.1)."""
    return f"[{host}]" if ":" in host else host


def format_address(address: Address) -> str:
    """HOST:PORT as SIP writes it (sent-by, hostport): "[2001:db8::1]:5060", "192.0.2.1:5060"."""
    host, port = address
    return f"{uri_host(host)}:{port}"


class SendMessage(NamedTuple):
    """Send `data` to `destination` from the service address (a tuple: cheap on the hot path).

    `data` is one whole SIP message (bytes). `destination` is (host, port): an IP literal
    (IPv6 without brackets) or, when it comes from a Via sent-by, a host name that the adaptor
    resolves (RFC 3263 §5); the core never resolves names. `transport` is `UDP` or `TCP`: over
    TCP the adaptor writes on its live connection whose peer is `destination`, else it opens
    one to `destination`, or to `fallback` when given (§18.2.2: a response whose request's
    connection has closed goes to the Via's received address and sent-by port).
    `udp_data`: a request sent over TCP only for its size (§18.1.1) as it reads over UDP, for
    the adaptor to send instead when the member refuses the connection (a reset: §18.1.1 says
    retry over UDP).
    """

    data: bytes
    destination: Address
    transport: str = UDP
    fallback: Address | None = None
    udp_data: bytes | None = None
