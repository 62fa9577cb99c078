"""What the core asks its adaptor to do."""

from typing import NamedTuple

Address = tuple[str, int]


class SendDatagram(NamedTuple):
    """Send `data` to `destination` from the service address (a tuple: cheap on the hot path)."""

    data: bytes
    destination: Address
