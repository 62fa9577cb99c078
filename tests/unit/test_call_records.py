"""Call records made by the core (`core.records`): one per INVITE attempt, as an output, dated
by the replicated clock anchor, the same bytes on every replica."""

from __future__ import annotations

from dataclasses import replace

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, SendMessage, TimerExpired
from sipshadow.core.events import SetClock
from sipshadow.core.records import RECORDS, CallRecord, decode_record
from sipshadow.replication.log import decode_control, encode_control
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.test_gateway import FixedEntropy

OFFSET = 1_790_000_000.0  # UTC at event-clock 0


def make_gateway(**options: float) -> Gateway:
    members = tuple(MemberSpec(address) for address in MEMBERS)
    config = GatewayConfig(service=ALG, members=members, probe_interval_s=0.0, call_records=True, **options)
    gateway = Gateway(config, FixedEntropy([0.1]))
    gateway.handle(SetClock(OFFSET, 0.0))
    return gateway


def send(gateway: Gateway, data: bytes, source: tuple[str, int] = CALLER, now: float = 0.0) -> list[SendMessage]:
    return gateway.handle(MessageReceived(data, source, now))


def split(outputs: list[SendMessage]) -> tuple[list[SendMessage], list[CallRecord]]:
    """(SIP outputs, records), checking records come after every SIP output of the event."""
    kinds = [output.transport == RECORDS for output in outputs]
    assert kinds == sorted(kinds), "records leave after the event's messages"
    return ([o for o in outputs if o.transport != RECORDS],
            [decode_record(o.data) for o in outputs if o.transport == RECORDS])  # fmt: skip


def invite(gateway: Gateway, *, call_id: str = "call-1@caller", cseq: int = 1, now: float = 0.0) -> SendMessage:
    sip, records = split(send(gateway, request("INVITE", call_id=call_id, cseq=cseq, branch=f"z9hG4bK{cseq}"), now=now))
    assert records == [] and len(sip) == 1
    return sip[0]


def respond(gateway: Gateway, forwarded: SendMessage, status: int, tag: str | None = "callee-tag",
            now: float = 0.0) -> list[CallRecord]:  # fmt: skip
    sip, records = split(send(gateway, response_to(forwarded.data, status, "X", to_tag=tag), forwarded.destination,
                              now))  # fmt: skip
    assert len(sip) == 1
    return records


def bye(gateway: Gateway, *, to_tag: str = "callee-tag", from_callee: bool = False, now: float = 0.0,
        branch: str = "z9hG4bKbye") -> list[CallRecord]:  # fmt: skip
    if from_callee:
        member = f"{MEMBERS[0][0]}:{MEMBERS[0][1]}"
        data = request("BYE", from_tag=to_tag, to_tag="caller-tag", cseq=1, branch=branch, via_host=member,
                       uri=f"sip:alice@{CALLER[0]}:{CALLER[1]}")  # fmt: skip
        outputs = send(gateway, data, MEMBERS[0], now)
    else:
        outputs = send(gateway, request("BYE", to_tag=to_tag, cseq=2, branch=branch), now=now)
    sip, records = split(outputs)
    assert len(sip) == 1
    return records


def test_an_answered_call_ended_by_the_caller_has_one_record_with_every_field() -> None:
    gateway = make_gateway()
    forwarded = invite(gateway, now=1.0)
    assert respond(gateway, forwarded, 180, now=1.5) == []
    assert respond(gateway, forwarded, 200, now=3.25) == []
    [record] = bye(gateway, now=63.25)
    assert record.call_id == "call-1@caller" and record.from_tag == "caller-tag" and record.to_tag == "callee-tag"
    assert record.from_uri == "sip:alice@example.org" and record.to_uri == "sip:bob@example.org"
    assert record.caller == "192.0.2.10:5070" and record.member == "192.0.2.21:5080" and record.transport == "udp"
    assert (record.invited_at, record.answered_at, record.ended_at) == (OFFSET + 1.0, OFFSET + 3.25, OFFSET + 63.25)
    assert (record.status, record.ended_by, record.end_reason, record.duration_s) == (200, "caller", "bye", 60.0)
    assert len(record.record_id) == 32
    assert gateway.counters.call_records == 1
    assert bye(gateway, now=63.5) == []  # a retransmitted BYE makes no second record


def test_the_callee_hanging_up_is_said_so() -> None:
    gateway = make_gateway()
    respond(gateway, forwarded := invite(gateway), 200)
    assert forwarded
    [record] = bye(gateway, from_callee=True, now=5.0)
    assert (record.ended_by, record.end_reason, record.duration_s) == ("callee", "bye", 5.0)


def test_a_2xx_retransmission_keeps_the_first_answer_time() -> None:
    gateway = make_gateway()
    forwarded = invite(gateway)
    respond(gateway, forwarded, 200, now=2.0)
    respond(gateway, forwarded, 200, now=2.5)
    [record] = bye(gateway, now=10.0)
    assert record.answered_at == OFFSET + 2.0 and record.duration_s == 8.0


def test_failures_and_cancels_end_the_attempt_with_their_status() -> None:
    gateway = make_gateway()
    [busy] = respond(gateway, invite(gateway, call_id="busy"), 486, "b1", now=1.0)
    assert (busy.status, busy.ended_by, busy.end_reason, busy.to_tag, busy.answered_at) == (486, "callee", "failed",
                                                                                            "b1", None)  # fmt: skip
    assert busy.duration_s == 0.0 and busy.ended_at == OFFSET + 1.0
    forwarded = invite(gateway, call_id="cancelled")
    send(gateway, request("CANCEL", call_id="cancelled", branch="z9hG4bK1"))
    [cancelled] = respond(gateway, forwarded, 487, None, now=2.0)
    assert (cancelled.status, cancelled.ended_by, cancelled.end_reason) == (487, "caller", "cancelled")
    assert cancelled.to_tag == ""


def test_expiry_ends_an_unanswered_attempt_408_and_an_idle_call_200() -> None:
    gateway = make_gateway(early_timeout_s=180.0, confirmed_timeout_s=600.0)
    invite(gateway, call_id="ringing")
    respond(gateway, invite(gateway, call_id="idle", now=1.0), 200, now=2.0)
    records = [decode_record(o.data) for o in gateway.handle(TimerExpired(1000.0)) if o.transport == RECORDS]
    by_call = {record.call_id: record for record in records}
    ringing = by_call["ringing"]
    assert (ringing.status, ringing.end_reason, ringing.ended_by) == (408, "expired", "gateway")
    assert (by_call["idle"].status, by_call["idle"].end_reason, by_call["idle"].duration_s) == (200, "expired", 998.0)
    assert len(records) == 2


def test_an_authentication_retry_is_a_second_attempt_with_its_own_record() -> None:
    gateway = make_gateway()
    [challenged] = respond(gateway, invite(gateway, cseq=1), 407, "proxy-tag")
    respond(gateway, invite(gateway, cseq=2, now=0.5), 200, now=1.0)
    [answered] = bye(gateway, now=2.0)
    assert challenged.status == 407 and answered.status == 200
    assert challenged.record_id != answered.record_id
    assert answered.invited_at == OFFSET + 0.5


def test_a_late_fork_is_a_second_answered_dialog_with_its_own_record() -> None:
    gateway = make_gateway()
    forwarded = invite(gateway, now=1.0)
    respond(gateway, forwarded, 200, "fa", now=2.0)
    respond(gateway, forwarded, 200, "fb", now=3.0)  # a forking member's second 2xx
    [first] = bye(gateway, to_tag="fa", now=4.0)
    [second] = bye(gateway, to_tag="fb", now=5.0, branch="z9hG4bKbye2")
    assert first.record_id != second.record_id
    assert (first.invited_at, first.answered_at) == (second.invited_at, OFFSET + 2.0)
    assert second.answered_at == OFFSET + 3.0


def test_a_2xx_without_our_record_route_is_off_path_until_its_requests_come_through_us() -> None:
    gateway = make_gateway(terminated_linger_s=32.0)
    for call_id in ("bypassed", "through-us"):
        forwarded = invite(gateway, call_id=call_id)
        data = response_to(forwarded.data, 200, "OK").replace(b"Record-Route: <sip:192.0.2.1:5060;lr>\r\n", b"")
        assert split(send(gateway, data, forwarded.destination, 2.0))[1] == []
    send(gateway, request("ACK", call_id="through-us", to_tag="callee-tag"), now=2.1)  # back on the path
    [bypassed] = [decode_record(o.data) for o in gateway.handle(TimerExpired(40.0)) if o.transport == RECORDS]
    assert (bypassed.call_id, bypassed.end_reason, bypassed.ended_at) == ("bypassed", "off-path", OFFSET + 2.0)
    _, [through] = split(send(gateway, request("BYE", call_id="through-us", to_tag="callee-tag", cseq=2), now=50.0))
    assert (through.end_reason, through.duration_s) == ("bye", 48.0)


def test_subscriptions_make_no_record_and_records_off_make_none() -> None:
    gateway = make_gateway()
    subscribe = request("SUBSCRIBE", call_id="sub", branch="z9hG4bKsub", extra=("Event: presence",))
    [forwarded] = send(gateway, subscribe)
    assert respond(gateway, forwarded, 200) == []
    off = Gateway(replace(gateway.config, call_records=False), FixedEntropy([0.1]))
    respond(off, forwarded_off := only_sip(send(off, request("INVITE"))), 200)
    assert forwarded_off and bye(off) == [] and off.counters.call_records == 0


def only_sip(outputs: list[SendMessage]) -> SendMessage:
    [output] = outputs
    return output


def test_a_snapshot_carries_drafts_flag_and_clock_so_the_replica_makes_the_same_bytes() -> None:
    primary = make_gateway()
    respond(primary, invite(primary, now=1.0), 200, now=2.0)
    replica = Gateway(replace(primary.config, call_records=False), FixedEntropy([0.1]))
    replica.import_state(primary.export_state())  # as a wire round trip leaves it: tuples become lists
    assert replica.config.call_records and replica.utc_offset == OFFSET
    assert replica.state_digest() == primary.state_digest()
    ended = [send(gateway, request("BYE", to_tag="callee-tag", cseq=2, branch="z9hG4bKb"), now=9.0)
             for gateway in (primary, replica)]  # fmt: skip
    assert ended[0] == ended[1] and any(o.transport == RECORDS for o in ended[0])
    assert replica.state_digest() == primary.state_digest()


def test_rows_from_the_wire_turn_drafts_back_into_tuples() -> None:
    import msgspec

    primary = make_gateway()
    respond(primary, invite(primary, now=1.0), 180, now=2.0)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(primary.export_state()))
    replica = Gateway(primary.config, FixedEntropy([0.1]))
    replica.import_state(state)
    respond(replica, invite(replica, now=1.0), 200, now=3.0)  # a retransmitted INVITE changes nothing
    respond(primary, invite(primary, now=1.0), 200, now=3.0)
    assert replica.state_digest() == primary.state_digest()  # the rehash of a changed call agrees


def test_the_clock_anchor_travels_as_a_control_entry_and_is_in_the_digest() -> None:
    event = SetClock(OFFSET + 0.125, 7.0)
    assert decode_control(encode_control(event), 7.0) == event
    gateway = make_gateway()
    before = gateway.state_digest()
    gateway.handle(event)
    assert gateway.utc_offset == OFFSET + 0.125 and gateway.state_digest() != before


def test_utf8_and_nul_in_headers_become_text_every_store_takes() -> None:
    gateway = make_gateway()
    data = request("INVITE").replace(b"sip:alice@example.org", "sip:jos\u00e9@example.org".encode())
    data = data.replace(b"Call-ID: call-1@caller", b"Call-ID: call-1\x00@caller")
    [forwarded] = send(gateway, data)
    [record] = respond(gateway, forwarded, 486)
    assert record.from_uri == "sip:jos\u00e9@example.org"
    assert "\x00" not in record.call_id


def test_a_record_the_old_primary_never_released_is_reissued_by_the_new_one_byte_for_byte() -> None:
    from tests.unit.replication_pair import Pair

    config = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0, call_records=True)
    pair = Pair(config)
    pair.connect()
    pair.deliver()
    pair.event(SetClock(OFFSET, 0.0))
    [forwarded] = pair.datagram(request("INVITE"), CALLER)
    pair.datagram(response_to(forwarded.data, 200, "OK"), forwarded.destination)
    pair.deliver()
    pair.advance(0.05)  # the call was answered well before the end (outside the resend window)
    ended = pair.datagram(request("BYE", to_tag="callee-tag", cseq=2, branch="z9hG4bKbye"), CALLER)
    pair.to_shadow_only()  # the BYE's entry reached the shadow; its release never happened
    [record] = [output for output in ended if output.transport == RECORDS]
    assert record not in pair.sent  # held for the shadow's acknowledgement
    handover = pair.take_over()
    assert [output for output in handover.resend if output.transport == RECORDS] == [record]
    assert decode_record(record.data).end_reason == "bye"


def test_the_uri_shortcut_agrees_with_the_name_addr_parser() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from sipshadow.core.gateway import _uri_of
    from sipshadow.sip import NameAddr, SipParseError

    text = st.text(alphabet='ab <>;="@:,\\ ', max_size=30)

    @given(st.one_of(text, st.builds(lambda d, u, p: f"{d}<sip:{u}>{p}", text, text, text)))
    def agrees(value: str) -> None:
        try:
            expected = NameAddr.parse(value).uri[:256]
        except SipParseError:
            return  # unreadable: the shortcut may still find a URI; the record keeps what it can
        assert _uri_of(value) == expected

    agrees()
