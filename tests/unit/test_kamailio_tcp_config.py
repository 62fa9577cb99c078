"""Kamailio's TCP rendering: members over TCP, readers like the UDP receivers, limits Kamailio can apply."""

from __future__ import annotations

import resource

import pytest

from sipshadow.lab.kamailio import (
    OPEN_FILES_MARGIN,
    TCP_CONNECTION_LIFETIME_S,
    TCP_MAX_CONNECTIONS,
    fit_tcp_connections,
    render_config,
    render_dispatcher_list,
)

LISTEN = ("127.0.0.1", 5060)
MEMBERS = [("127.0.0.1", 5071), ("127.0.0.1", 5072)]


def test_udp_rendering_keeps_tcp_disabled() -> None:
    config = render_config(LISTEN, MEMBERS, 2, list_file="/w/d.list")
    assert "# UDP only: 2 receiver process(es) on the single listen socket.\n" in config
    assert "listen=udp:127.0.0.1:5060\nchildren=2\nmaxbuffer=8388608\ndisable_tcp=yes\nenable_sctp=no\n" in config
    assert "listen=tcp:" not in config and "tcp_children" not in config and "${" not in config
    assert render_dispatcher_list(MEMBERS) == (
        "# setid destination flags priority\n1 sip:127.0.0.1:5071 0 0\n1 sip:127.0.0.1:5072 0 0\n"
    )


def test_tcp_rendering_listens_on_both_and_has_as_many_readers_as_receivers() -> None:
    config = render_config(LISTEN, MEMBERS, 3, list_file="/w/d.list", transport="tcp", tcp_max_connections=9000)
    assert "listen=udp:127.0.0.1:5060\nchildren=3\n" in config
    assert "listen=tcp:127.0.0.1:5060\ndisable_tcp=no\ntcp_children=3\n" in config
    assert f"tcp_connection_lifetime={TCP_CONNECTION_LIFETIME_S}\ntcp_max_connections=9000\n" in config
    assert "disable_tcp=yes" not in config and "open_files_limit" not in config and "${" not in config
    assert "$du = $dlg_var(member);" in config  # Kamailio's own `$` untouched
    with_limit = render_config(LISTEN, MEMBERS, list_file="/w/d.list", transport="tcp", open_files_limit=20000)
    assert f"tcp_max_connections={TCP_MAX_CONNECTIONS}\nopen_files_limit=20000\n" in with_limit


def test_tcp_dispatcher_destinations_name_the_transport() -> None:
    assert render_dispatcher_list(MEMBERS, transport="tcp").splitlines()[1:] == [
        "1 sip:127.0.0.1:5071;transport=tcp 0 0",
        "1 sip:127.0.0.1:5072;transport=tcp 0 0",
    ]


def test_bad_transport_and_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        render_config(LISTEN, MEMBERS, transport="sctp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transport"):
        render_dispatcher_list(MEMBERS, transport="tls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tcp_max_connections"):
        render_config(LISTEN, MEMBERS, transport="tcp", tcp_max_connections=0)
    with pytest.raises(ValueError, match="open_files_limit"):
        render_config(LISTEN, MEMBERS, transport="tcp", tcp_max_connections=100, open_files_limit=100)


def test_connections_fit_under_the_open_file_limit() -> None:
    # Room enough: nothing to raise.
    assert fit_tcp_connections(16384, (65536, 65536)) == (16384, None)
    # The hard limit is the ceiling: Kamailio exits when it cannot raise to open_files_limit.
    assert fit_tcp_connections(16384, (20000, 20000)) == (20000 - OPEN_FILES_MARGIN, None)
    assert fit_tcp_connections(16384, (1024, 20000)) == (20000 - OPEN_FILES_MARGIN, 20000)
    assert fit_tcp_connections(16384, (1024, resource.RLIM_INFINITY)) == (16384, 16384 + OPEN_FILES_MARGIN)
    # A small limit keeps half for the connections rather than none.
    assert fit_tcp_connections(16384, (1024, 4096)) == (2048, 4096)
    with pytest.raises(ValueError):
        fit_tcp_connections(0, (1024, 1024))
