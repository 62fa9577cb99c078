"""`HOST:PORT` text, as operators write it in configs and flags ([v6]:port included)."""

from __future__ import annotations

import ipaddress

from sipshadow.core.actions import Address


def parse_address(text: str, default_port: int | None = None) -> Address:
    """Parse `host:port` (or `[v6]:port`); raises ValueError with an operator-readable reason."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} is not HOST:PORT")
    else:
        host, _, port_text = text.rpartition(":")
        if not host:
            host, port_text = port_text, ""
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r} has no port (expected HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} has a bad port (expected 1-65535)")
    return host, int(port_text)


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_literal(host: str) -> IpAddress | None:
    """The address `host` spells, or None for a name (or anything else)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    return ip_literal(host) is not None
