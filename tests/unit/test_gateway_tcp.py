"""The core over TCP (RFC 3261 §18, RFC 5658): transports per side, Vias, Record-Routes, replies."""

from __future__ import annotations

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, SendMessage, TimerExpired
from sipshadow.core.actions import TCP, UDP
from sipshadow.sip import parse_message
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to

TCP_RR = "<sip:192.0.2.1:5060;transport=tcp;lr>"
UDP_RR = "<sip:192.0.2.1:5060;lr>"


def make_gateway(*transports: str, **options: object) -> Gateway:
    members = tuple(MemberSpec(address, 1, transport) for address, transport in zip(MEMBERS, transports, strict=False))
    config = GatewayConfig(service=ALG, members=members, probe_interval_s=0.0, **options)  # type: ignore[arg-type]
    return Gateway(config, None)  # type: ignore[arg-type]  # round-robin draws nothing


def over_tcp(data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1)


def send(gateway: Gateway, data: bytes, source: tuple[str, int], transport: str, now: float = 0.0) -> SendMessage:
    outputs = gateway.handle(MessageReceived(data, source, now, transport))
    assert len(outputs) == 1, outputs
    return outputs[0]


#: A TCP caller's connection comes from an ephemeral port, not its sent-by port (5070).
TCP_CALLER = ("192.0.2.10", 40123)


def tcp_call(gateway: Gateway) -> SendMessage:
    return send(gateway, over_tcp(request("INVITE")), TCP_CALLER, TCP)


def test_a_tcp_caller_to_a_udp_member_gets_two_record_routes_and_its_connection_stamped() -> None:
    gateway = make_gateway(UDP, UDP)
    out = tcp_call(gateway)
    assert (out.destination, out.transport) == (MEMBERS[0], UDP)
    message = parse_message(out.data)
    assert message.values("record-route") == [UDP_RR, TCP_RR]  # outbound (member's side) on top
    vias = message.values("via")
    assert vias[0].startswith("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKss")
    assert vias[1] == "SIP/2.0/TCP 192.0.2.10:5070;branch=z9hG4bKcaller1;received=192.0.2.10;rport=40123"


def test_the_response_goes_back_on_the_callers_connection_or_else_to_its_sent_by() -> None:
    gateway = make_gateway(UDP, UDP)
    forwarded = tcp_call(gateway)
    ok = send(gateway, response_to(forwarded.data, 200, "OK"), MEMBERS[0], UDP)
    assert (ok.destination, ok.transport, ok.fallback) == (TCP_CALLER, TCP, ("192.0.2.10", 5070))


def test_the_callees_bye_reaches_the_tcp_caller_over_tcp_with_its_contact_as_fallback() -> None:
    gateway = make_gateway(UDP, UDP)
    forwarded = tcp_call(gateway)
    send(gateway, response_to(forwarded.data, 200, "OK"), MEMBERS[0], UDP)
    bye = request("BYE", from_tag="callee-tag", to_tag="caller-tag", via_host="192.0.2.21:5080",
                  branch="z9hG4bKm1", uri="sip:alice@192.0.2.10:5070;transport=tcp",
                  extra=(f"Route: {UDP_RR}", f"Route: {TCP_RR}"))  # fmt: skip
    out = send(gateway, bye, MEMBERS[0], UDP)
    assert (out.destination, out.transport, out.fallback) == (TCP_CALLER, TCP, ("192.0.2.10", 5070))
    message = parse_message(out.data)
    assert message.first("route") is None  # both of our Routes came off (RFC 5658)
    assert message.values("via")[0].startswith("SIP/2.0/TCP 192.0.2.1:5060;")


def test_a_udp_caller_to_a_tcp_member_and_the_members_answer_back_over_udp() -> None:
    gateway = make_gateway(TCP, TCP)
    out = send(gateway, request("INVITE"), CALLER, UDP)
    assert (out.destination, out.transport, out.fallback) == (MEMBERS[0], TCP, None)
    message = parse_message(out.data)
    assert message.values("record-route") == [TCP_RR, UDP_RR]
    assert message.values("via")[0].startswith("SIP/2.0/TCP 192.0.2.1:5060;")
    ringing = send(gateway, response_to(out.data, 180, "Ringing"), MEMBERS[0], TCP)
    assert (ringing.destination, ringing.transport) == (CALLER, UDP)
    ack = send(
        gateway, request("ACK", to_tag="callee-tag", extra=(f"Route: {UDP_RR}", f"Route: {TCP_RR}")), CALLER, UDP
    )
    assert (ack.destination, ack.transport) == (MEMBERS[0], TCP)


def test_both_sides_over_tcp_get_one_record_route_with_the_transport() -> None:
    gateway = make_gateway(TCP, TCP)
    out = tcp_call(gateway)
    assert parse_message(out.data).values("record-route") == [TCP_RR]
    assert out.transport == TCP


def test_a_request_over_1300_bytes_for_a_udp_member_goes_over_tcp_unless_configured_off() -> None:
    big = request(
        "INVITE", body="v=0\r\n" + "a=x-padding:" + "p" * 3000 + "\r\n", extra=("Content-Type: application/sdp",)
    )
    out = send(make_gateway(UDP, UDP), big, CALLER, UDP)
    assert out.transport == TCP and len(out.data) > 3000
    message = parse_message(out.data)
    assert message.values("via")[0].startswith("SIP/2.0/TCP 192.0.2.1:5060;")
    assert message.values("record-route") == [TCP_RR, UDP_RR]
    assert out.udp_data is not None  # for a member that refuses the connection (§18.1.1: retry over UDP)
    over_udp = parse_message(out.udp_data)
    assert over_udp.values("via")[0].startswith("SIP/2.0/UDP 192.0.2.1:5060;")
    assert over_udp.values("record-route") == [UDP_RR] and over_udp.body == message.body
    huge = request("INVITE", body="v=0\r\n" + "a=x:" + "p" * 20000 + "\r\n", extra=("Content-Type: application/sdp",))
    assert send(make_gateway(UDP, UDP), huge, CALLER, UDP).udp_data is None  # past UDP_FALLBACK_LIMIT_BYTES
    kept = send(make_gateway(UDP, UDP, large_requests_over_tcp=False), big, CALLER, UDP)
    assert kept.transport == UDP and parse_message(kept.data).values("record-route") == [UDP_RR]


def test_a_reply_of_the_alg_itself_goes_back_on_the_connection() -> None:
    gateway = make_gateway(UDP, UDP)
    broken = over_tcp(request("INVITE", max_forwards="0"))
    out = send(gateway, broken, TCP_CALLER, TCP)
    assert parse_message(out.data).status == 483
    assert (out.destination, out.transport, out.fallback) == (TCP_CALLER, TCP, ("192.0.2.10", 5070))


def test_probes_run_over_each_members_transport() -> None:
    gateway = Gateway(
        GatewayConfig(
            service=ALG, members=(MemberSpec(MEMBERS[0], 1, TCP), MemberSpec(MEMBERS[1])), probe_interval_s=1.0
        ),
        None,  # type: ignore[arg-type]
    )
    tcp_probe, udp_probe = gateway.handle(TimerExpired(0.0))
    assert tcp_probe.transport == TCP and udp_probe.transport == UDP
    message = parse_message(tcp_probe.data)
    assert message.uri == "sip:192.0.2.21:5080;transport=tcp"
    assert message.values("via")[0].startswith("SIP/2.0/TCP ")
    answer = response_to(tcp_probe.data, 200, "OK", to_tag="m")
    assert gateway.handle(MessageReceived(answer, MEMBERS[0], 0.1, TCP)) == []
    assert gateway.counters.forged_responses == 0 and gateway.counters.stray_probe_answers == 0


def test_the_transport_survives_state_transfer_and_is_in_the_digest() -> None:
    primary = make_gateway(UDP, UDP)
    forwarded = tcp_call(primary)
    send(primary, response_to(forwarded.data, 200, "OK"), MEMBERS[0], UDP)
    shadow = make_gateway(UDP, UDP)
    shadow.import_state(primary.export_state())
    assert shadow.state_digest() == primary.state_digest()
    dialog = next(iter(shadow.table.get("call-1@caller").dialogs.values()))  # type: ignore[union-attr]
    assert dialog.transport == TCP
    over_udp = make_gateway(UDP, UDP)
    forwarded = send(over_udp, request("INVITE"), TCP_CALLER, UDP)
    send(over_udp, response_to(forwarded.data, 200, "OK"), MEMBERS[0], UDP)
    assert over_udp.table.digest != primary.table.digest


def test_a_ping_on_a_connection_gets_its_pong_from_the_core_so_a_replica_counts_it() -> None:
    gateway = make_gateway(UDP)
    assert send(gateway, b"\r\n\r\n", TCP_CALLER, TCP) == SendMessage(b"\r\n", TCP_CALLER, TCP)
    assert gateway.handle(MessageReceived(b"\r\n\r\n", CALLER, 0.0, UDP)) == []  # over UDP: counted only
    assert gateway.counters.keepalives == 2
