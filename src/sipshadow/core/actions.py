"""What the core asks its adaptor to do."""

from typing import NamedTuple

Address = tuple[str, int]


class SendDatagram(NamedTuple):
    """Send `data` to `destination` from the service address (a tuple: cheap on the hot path).

    `data` is one whole SIP message (bytes). `destination` is (host, port): an IP literal
    (IPv6 without brackets) or, when it comes from a Via sent-by, a host name that the adaptor
    resolves (RFC 3263 §5); the core never resolves names.
    """

    data: bytes
    destination: Address
