"""`replication.vip_lifetime_ms` and the RTM_NEWADDR that carries it (no root, no namespace)."""

from __future__ import annotations

import socket
import struct

import msgspec
import pytest

from sipshadow.net import vip
from sipshadow.runtime.config import ConfigError, ConfigFile, ReplicationConfig, ReplicationSection, build

PAIR = """
[cluster]
members = ["127.0.0.1:5070"]
[replication]
role = "primary"
listen = "127.0.0.1:7000"
peer = "127.0.0.1:7001"
key = "0123456789abcdef0123"
input = "tap"
vip_interface = "eth0"
"""


def replication(extra: str = "") -> ReplicationConfig:
    config = build(msgspec.toml.decode(PAIR + extra, type=ConfigFile))
    assert config.replication is not None
    return config.replication


def test_the_lifetime_defaults_to_three_seconds_as_net_vip_does() -> None:
    assert replication().vip_lifetime_s == vip.VIP_LIFETIME_S == 3
    assert ReplicationSection().vip_lifetime_ms == vip.VIP_LIFETIME_S * 1000


def test_a_lifetime_of_whole_seconds_above_three_windows_is_taken() -> None:
    taken = replication("vip_lifetime_ms = 7000\nheartbeat_interval_ms = 500\nheartbeat_misses = 4\n")
    assert taken.vip_lifetime_s == 7


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("vip_lifetime_ms = 0", "must be > 0, got 0"),
        ("vip_lifetime_ms = -1000", "must be > 0"),
        ("vip_lifetime_ms = 2500", "must be whole seconds"),
        ("vip_lifetime_ms = 6000\nheartbeat_interval_ms = 500\nheartbeat_misses = 4", "> 3 x the heartbeat window"),
        ("vip_lifetime_ms = 1000\nheartbeat_interval_ms = 100\nheartbeat_misses = 4", "= 400), got 1000"),
    ],
)
def test_a_bad_lifetime_gets_one_line_naming_the_key(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        replication(extra + "\n")
    assert raised.value.key == "replication.vip_lifetime_ms"
    message = str(raised.value)
    assert message.startswith("config error: replication.vip_lifetime_ms: ") and "\n" not in message
    assert problem in message


def attributes(message: bytes) -> dict[int, bytes]:
    """The rtattrs after the nlmsghdr and ifaddrmsg of one rtnetlink message."""
    found, offset = {}, 16 + 8
    while offset < len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        found[kind] = message[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def test_an_add_with_a_lifetime_carries_cacheinfo_and_replaces() -> None:
    message = vip.addr_message(vip.RTM_NEWADDR, 7, 2, "198.18.0.1", 32, lifetime_s=3)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", message)
    assert (length, kind, seq) == (len(message), vip.RTM_NEWADDR, 7)
    assert flags & vip.NLM_F_REPLACE and flags & vip.NLM_F_CREATE  # a renewal refreshes, never EEXIST
    found = attributes(message)
    assert found[vip.IFA_LOCAL] == socket.inet_aton("198.18.0.1")
    assert struct.unpack("=IIII", found[vip.IFA_CACHEINFO]) == (3, 3, 0, 0)  # preferred, valid


def test_without_a_lifetime_and_on_delete_there_is_no_cacheinfo() -> None:
    assert vip.IFA_CACHEINFO not in attributes(vip.addr_message(vip.RTM_NEWADDR, 1, 2, "198.18.0.1", 32))
    deleting = vip.addr_message(vip.RTM_DELADDR, 1, 2, "198.18.0.1", 32, lifetime_s=3)
    assert vip.IFA_CACHEINFO not in attributes(deleting)
