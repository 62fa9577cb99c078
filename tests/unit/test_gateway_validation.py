"""Framing, single-valued headers, request validation and response next hops (core, no I/O)."""

from __future__ import annotations

import pytest

from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import make_gateway, only, send, start_call, status_of

# -- kind 5: framing and single-valued headers (§18.3, §7.3.1, §20.14, §20.22) -------------


@pytest.mark.parametrize(("written", "forwarded"), [("0068", "67"), ("255", "254"), ("1", "0")])
def test_max_forwards_is_digits_from_0_to_255_leading_zeros_allowed(written: str, forwarded: str) -> None:
    out = only(send(make_gateway(), request("INVITE", max_forwards=written)))
    assert parse_message(out.data).first("max-forwards") == forwarded


@pytest.mark.parametrize("written", ["300", "256", "-1", "7 0", "0x10", "9" * 5000])
def test_max_forwards_out_of_range_or_not_digits_gets_400(written: str) -> None:
    out = only(send(make_gateway(), request("INVITE", max_forwards=written)))
    assert (status_of(out), parse_message(out.data).reason) == (400, "Bad Max-Forwards")


def test_octets_after_content_length_are_discarded_and_the_message_processed() -> None:
    data = request("INVITE", body="v=0\r\n") + b"trailing junk after the body"
    forwarded = parse_message(only(send(make_gateway(), data)).data)
    assert forwarded.method == "INVITE" and forwarded.body == b"v=0\r\n"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [(("l: 13",), "Multiple Content-Length"), (("Content-Length: 5",), "Multiple Content-Length")],
)
def test_two_content_lengths_get_400(extra: tuple[str, ...], reason: str) -> None:
    data = request("INVITE", body="v=0\r\n", extra=extra)
    out = only(send(make_gateway(), data))
    assert (status_of(out), parse_message(out.data).reason) == (400, reason)


def test_responses_follow_the_same_framing_rules_dropped_and_counted() -> None:
    gateway = make_gateway()
    invite = start_call(gateway)
    bad = response_to(invite.data, 180, "Ringing").replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4")
    assert send(gateway, bad, MEMBERS[0]) == []
    assert gateway.counters.malformed_responses == 1
    padded = response_to(invite.data, 180, "Ringing") + b"extra"
    assert parse_message(only(send(gateway, padded, MEMBERS[0])).data).body == b""


# -- kind 6: request validation (§16.3, §8.2) -----------------------------------------------


def test_another_sip_version_gets_505() -> None:
    data = request("OPTIONS", uri="sip:t.watson@example.org").replace(b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1)
    out = only(send(make_gateway(), data))
    assert (status_of(out), out.destination) == (505, CALLER)


def test_proxy_require_gets_420_listing_what_is_unsupported() -> None:
    gateway = make_gateway()
    out = only(send(gateway, request("INVITE", extra=("Proxy-Require: foo, bar",))))
    reply = parse_message(out.data)
    assert (reply.status, reply.first("unsupported")) == (420, "foo, bar")
    assert len(gateway.table) == 0
    require_only = only(send(gateway, request("INVITE", extra=("Require: foo",))))
    assert require_only.destination == MEMBERS[0]  # Require is for the UAS (§8.2.2.3), not for us


@pytest.mark.parametrize("uri", ["foo:bar", "http://example.org/", "nobodyknowsthisscheme:totallyopaquecontent"])
def test_a_request_uri_scheme_we_cannot_route_gets_416(uri: str) -> None:
    gateway = make_gateway()
    assert status_of(only(send(gateway, request("INVITE", uri=uri)))) == 416
    assert len(gateway.table) == 0


def test_tel_and_sips_request_uris_are_routed() -> None:
    gateway = make_gateway()
    for index, uri in enumerate(("tel:+15551234567", "sips:bob@example.org")):
        assert only(send(gateway, request("INVITE", uri=uri, call_id=f"c{index}"))).destination in MEMBERS


# -- kind 7: response next hop (§18.2.2, RFC 3263 §5) ---------------------------------------


def relay(next_via: str) -> list:
    """A response to a forwarded INVITE whose caller Via is `next_via`."""
    gateway = make_gateway()
    invite = start_call(gateway)
    original = "SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKcall-1@caller"
    data = response_to(invite.data, 180, "Ringing").replace(original.encode(), next_via.encode())
    return send(gateway, data, MEMBERS[0]), gateway


def test_a_next_hop_named_by_host_name_goes_to_the_sender_to_resolve() -> None:
    outputs, _ = relay("SIP/2.0/UDP localhost:5999;branch=z9hG4bKx")
    assert only(outputs).destination == ("localhost", 5999)


def test_maddr_wins_over_received_and_sent_by() -> None:
    outputs, _ = relay("SIP/2.0/UDP x.invalid:5999;maddr=239.255.0.1;received=192.0.2.10;branch=z9hG4bKx")
    assert only(outputs).destination == ("239.255.0.1", 5999)


def test_broadcast_next_hops_are_relayed() -> None:
    outputs, _ = relay("SIP/2.0/UDP 255.255.255.255:5060;branch=z9hG4bKx")
    assert only(outputs).destination == ("255.255.255.255", 5060)


@pytest.mark.parametrize(
    "next_via",
    [f"SIP/2.0/UDP {ALG[0]}:{ALG[1]};branch=z9hG4bKx", f"SIP/2.0/UDP h.example;received={ALG[0]};branch=z9hG4bKx"],
)
def test_a_response_whose_next_hop_is_the_alg_itself_is_dropped_and_counted(next_via: str) -> None:
    outputs, gateway = relay(next_via)
    assert outputs == [] and gateway.counters.response_loops == 1


# -- received/rport (§18.2.1, §18.2.2, RFC 3581): where requests say they came from, and where
# the answers go, when the source port or address is not the one in Via ---------------------

NAT_SOURCE = ("203.0.113.7", 4000)


@pytest.mark.parametrize(
    ("via_host", "rport", "stamped", "reply_to"),
    [
        ("192.0.2.10:5070", False, None, ("192.0.2.10", 5070)),  # same address: nothing to say
        ("192.0.2.10:5070", True, ";rport=6000;received=192.0.2.10", ("192.0.2.10", 6000)),
        ("10.0.0.5:5070", False, ";received=203.0.113.7", ("203.0.113.7", 5070)),
        ("10.0.0.5:5070", True, ";rport=4000;received=203.0.113.7", ("203.0.113.7", 4000)),
    ],
)
def test_received_and_rport_are_stamped_and_the_algs_own_replies_follow_them(
    via_host: str, rport: bool, stamped: str | None, reply_to: tuple[str, int]
) -> None:
    source = ("192.0.2.10", 6000) if via_host.startswith("192.0.2.10") else NAT_SOURCE
    branch = "z9hG4bKnat" + (";rport" if rport else "")
    gateway = make_gateway()
    forwarded = parse_message(only(send(gateway, request("INVITE", via_host=via_host, branch=branch), source)).data)
    caller_via = forwarded.values("via")[1]
    if stamped is None:
        assert "received" not in caller_via and "rport=" not in caller_via
    else:
        params = dict(part.partition("=")[::2] for part in caller_via.split(";")[1:])
        expected = dict(part.partition("=")[::2] for part in stamped.split(";")[1:])
        assert {key: params[key] for key in expected} == expected, caller_via
    bad_bye = request("BYE", to_tag="nobody", cseq=2, via_host=via_host, branch=branch)
    assert only(send(gateway, bad_bye, source)).destination == reply_to  # the ALG's own 481
    relay = make_gateway()
    invite = only(send(relay, request("INVITE", via_host=via_host, branch=branch), source))
    ringing = only(send(relay, response_to(invite.data, 180, "Ringing"), MEMBERS[0]))
    assert ringing.destination == reply_to  # a member's response goes back the same way


def test_an_ack_too_broken_to_parse_is_counted_and_never_answered() -> None:
    """§17.2.1: nothing answers an ACK, not even a 400 for a header line without a colon."""
    from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived
    from sipshadow.determinism import SystemEntropy
    from tests.unit.messages import ALG, CALLER, MEMBERS, request

    gateway = Gateway(GatewayConfig(ALG, (MemberSpec(MEMBERS[0]),), probe_interval_s=0.0), SystemEntropy(1))
    broken = request("ACK").replace(b"Call-ID:", b"Call-ID", 1)
    assert gateway.handle(MessageReceived(broken, CALLER, 0.0)) == []
    assert gateway.counters.malformed_requests == 1
    broken_invite = request("INVITE").replace(b"Call-ID:", b"Call-ID", 1)
    (answer,) = gateway.handle(MessageReceived(broken_invite, CALLER, 0.0))
    assert answer.data.startswith(b"SIP/2.0 400")
