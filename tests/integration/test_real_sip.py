"""Acceptance tests: hand-scripted SIP over real UDP sockets through a real `sipshadow serve`.

Each test proves one kind of behaviour RFC 3261 asks of a dialog-stateful proxy in front of
a cluster, with every tag, branch and timing chosen by the test (see `sip_peers`). The ALG
runs as a child process on 127.0.0.1; the caller and the members are plain UDP sockets.

Kind 2 (provisional responses refresh Timer C) runs on a scaled clock: early_timeout_s of
1 s (the config warns that this is below RFC 3261's three minutes) and provisionals every
0.6 s for 2.5 s; the 185-second ring itself is a core unit test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUac, SippUas, free_port
from sipshadow.runtime.status import StatusDocument
from tests.conftest import FAST_PROBES
from tests.integration.sip_peers import (
    HOST,
    Leg,
    SipMessage,
    UdpPeer,
    build_request,
    build_response,
    expect_any,
    new_branch,
    new_token,
    param,
)

pytestmark = pytest.mark.timeout(120)

STATUS = "[status]\ninterval_s = 0.1\n"
HEALTH_FAST = "[health]\nprobe_interval_ms = 200\nprobe_misses = 2\n"
T = TypeVar("T")


# -- the ALG and its status ------------------------------------------------------------------


@contextmanager
def running_alg(workdir: Path, members: Sequence[UdpPeer], config: str = "") -> Iterator[AlgProcess]:
    """A `sipshadow serve` on a free loopback port in front of `members`, stopped afterwards."""
    process = AlgProcess((HOST, free_port()), [m.address for m in members], workdir, config_text=STATUS + config)
    with process:
        yield process


def route_of(alg: AlgProcess) -> str:
    """The ALG's Record-Route value, which in-dialog requests carry as their Route."""
    return f"<sip:{HOST}:{alg.listen[1]};lr>"


def read_status(alg: AlgProcess) -> StatusDocument:
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return alg.status()
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def fresh_status(alg: AlgProcess) -> StatusDocument:
    """A status document written after this call began: the file lags the ALG by up to one
    interval, so a read right after a message could show the state from before it."""

    def written() -> int | None:
        try:
            return alg.status_file.stat().st_mtime_ns
        except OSError:
            return None

    before = written()
    deadline = time.monotonic() + 2.0
    while written() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    return read_status(alg)


def status_value(alg: AlgProcess, read: Callable[[StatusDocument], T], expected: T, timeout: float = 1.0) -> T:
    """Poll fresh status documents until `read` gives `expected`; the last value seen either way."""
    deadline = time.monotonic() + timeout
    value = read(fresh_status(alg))
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.03)
        value = read(read_status(alg))
    return value


def active_calls(index: int = 0) -> Callable[[StatusDocument], int]:
    return lambda status: int(status.members[index].active_calls)


def member_up(index: int = 0) -> Callable[[StatusDocument], bool]:
    return lambda status: bool(status.members[index].up)


# -- calls -------------------------------------------------------------------------------------


def initial_request(
    method: str,
    caller: UdpPeer,
    alg: AlgProcess,
    *,
    call_id: str,
    from_tag: str,
    branch: str | None = None,
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    **options: Any,
) -> bytes:
    """A request from the caller to `sip:bob@ALG`, out of dialog unless `to_tag` is given."""
    to = f"<sip:bob@{HOST}:{alg.listen[1]}>" + (f";tag={to_tag}" if to_tag else "")
    return build_request(
        method,
        f"sip:bob@{HOST}:{alg.listen[1]}",
        vias=[caller.via(branch)],
        from_=f"<{caller.uri('alice')}>;tag={from_tag}",
        to=to,
        call_id=call_id,
        cseq=cseq,
        cseq_method=cseq_method,
        contact=f"<{caller.uri('alice')}>",
        **options,
    )


@dataclass
class Call:
    """A confirmed call through the ALG, as each side sees it."""

    caller: Leg
    callee: Leg
    invite: SipMessage  # as the member received it


def place_call(alg: AlgProcess, caller: UdpPeer, member: UdpPeer, *, to_tag: str = "callee") -> Call:
    """INVITE, 200 and ACK through the ALG; both legs route in-dialog requests via the ALG."""
    call_id, from_tag = f"{new_token()}@caller", new_token()
    caller.send(initial_request("INVITE", caller, alg, call_id=call_id, from_tag=from_tag), alg.listen)
    invite = member.expect("INVITE ")
    member.send(build_response(invite, 200, "OK", to_tag=to_tag, contact=f"<{member.uri('bob')}>"), alg.listen)
    return acknowledge(alg, caller, member, invite, caller.expect("SIP/2.0 200"))


def acknowledge(alg: AlgProcess, caller: UdpPeer, member: UdpPeer, invite: SipMessage, ok: SipMessage) -> Call:
    """The caller ACKs the 200 `ok` through the ALG; both legs route in-dialog requests via it."""
    call_id, route = ok.first("call-id") or "", [route_of(alg)]
    caller_leg = Leg(caller, call_id, ok.first("from") or "", ok.first("to") or "", member.uri("bob"), route)
    callee_leg = Leg(member, call_id, ok.first("to") or "", ok.first("from") or "", caller.uri("alice"), route, 0)
    caller.send(caller_leg.request("ACK", cseq=1), alg.listen)
    member.expect("ACK ")
    return Call(caller_leg, callee_leg, invite)


def hang_up(alg: AlgProcess, call: Call, *, note: str = "") -> None:
    """The caller's BYE reaches the member, whose 200 reaches the caller."""
    call.caller.peer.send(call.caller.request("BYE"), alg.listen)
    bye = call.callee.peer.expect("BYE ", note=note)
    call.callee.peer.send(build_response(bye, 200, "OK"), alg.listen)
    call.caller.peer.expect("SIP/2.0 200")


def drain(*peers: UdpPeer) -> None:
    """Forget what earlier (possibly failed) steps left behind, so a step sees only its own."""
    for peer in peers:
        peer.drain()


@pytest.fixture
def caller() -> Iterator[UdpPeer]:
    with UdpPeer("caller") as peer:
        yield peer


@pytest.fixture
def member() -> Iterator[UdpPeer]:
    with UdpPeer("member", answer_options=True) as peer:
        yield peer


# -- 1. dialog identity ------------------------------------------------------------------------


def test_forked_2xx_are_separate_dialogs_keyed_by_call_id_and_both_tags(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer
) -> None:
    """§12: a dialog is Call-ID + local tag + remote tag; two 2xx to one INVITE (forking behind
    the member) make two dialogs, and ending one must leave the other routable after the
    first's linger, where a table keyed by Call-ID alone would answer 481."""
    with running_alg(tmp_path, [member], "[dialogs]\nterminated_linger_s = 1.0\n") as alg:
        call_id, from_tag = f"{new_token()}@caller", new_token()
        caller.send(initial_request("INVITE", caller, alg, call_id=call_id, from_tag=from_tag), alg.listen)
        invite = member.expect("INVITE ")
        contact = f"<{member.uri('bob')}>"
        for tag in ("t1", "t2", "t3"):
            member.send(build_response(invite, 180, "Ringing", to_tag=tag, contact=contact), alg.listen)
            assert caller.expect("SIP/2.0 180").tag("to") == tag
        for tag in ("fa", "fb"):
            member.send(build_response(invite, 200, "OK", to_tag=tag, contact=contact), alg.listen)
            assert caller.expect("SIP/2.0 200").tag("to") == tag
        base = Leg(
            caller,
            call_id,
            f"<{caller.uri('alice')}>;tag={from_tag}",
            f"<sip:bob@{HOST}>",
            member.uri("bob"),
            [route_of(alg)],
        )
        leg_fa, leg_fb = base.with_remote_tag("fa"), base.with_remote_tag("fb")
        for leg, tag in ((leg_fa, "fa"), (leg_fb, "fb")):
            caller.send(leg.request("ACK", cseq=1), alg.listen)
            assert member.expect("ACK ").tag("to") == tag

        caller.send(leg_fb.request("BYE"), alg.listen)
        bye = member.expect("BYE ")
        assert bye.tag("to") == "fb"
        member.send(build_response(bye, 200, "OK"), alg.listen)
        caller.expect("SIP/2.0 200")
        with_fa_up = status_value(alg, active_calls(), 1)

        time.sleep(2.0)  # twice terminated_linger_s: fb's dialog is gone
        caller.send(leg_fa.request("BYE"), alg.listen)
        bye = member.expect("BYE ", note=f"active_calls with only fa up was {with_fa_up}")
        assert bye.tag("to") == "fa"
        member.send(build_response(bye, 200, "OK"), alg.listen)
        caller.expect("SIP/2.0 200")
        after_both = status_value(alg, active_calls(), 0, timeout=2.5)
        assert (with_fa_up, after_both) == (1, 0), "active_calls: (with only fa up, after both BYEs)"


# -- 2. early dialogs that ring long --------------------------------------------------------


def test_provisionals_refresh_timer_c_so_a_call_that_rings_past_it_keeps_its_route(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer
) -> None:
    """§16.6 item 11, §16.7 item 2: each 101-199 restarts Timer C; a call that rings for longer
    than Timer C in all, but never longer between provisionals, is answered and hung up."""
    with running_alg(tmp_path, [member], "[dialogs]\nearly_timeout_s = 1.0\n") as alg:
        call_id, from_tag = f"{new_token()}@caller", new_token()
        caller.send(initial_request("INVITE", caller, alg, call_id=call_id, from_tag=from_tag), alg.listen)
        invite = member.expect("INVITE ")
        contact = f"<{member.uri('bob')}>"
        for _ in range(4):  # 2.4 s of ringing against a 1 s Timer C
            member.send(build_response(invite, 180, "Ringing", to_tag="ring", contact=contact), alg.listen)
            caller.expect("SIP/2.0 180")
            time.sleep(0.6)
        member.send(build_response(invite, 200, "OK", to_tag="ring", contact=contact), alg.listen)
        hang_up(alg, acknowledge(alg, caller, member, invite, caller.expect("SIP/2.0 200")))
        assert status_value(alg, active_calls(), 0, timeout=2.0) == 0


# -- 3. routing of CANCEL, strict routing ----------------------------------------------------


def test_cancel_goes_where_its_request_went_and_a_strict_route_is_undone(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer, subtests: pytest.Subtests
) -> None:
    """§9.1, §16.10: a CANCEL follows the request it cancels, whichever side sent it; §16.4:
    a request a strict router sent us (our URI as Request-URI) gets its real target back."""
    with running_alg(tmp_path, [member]) as alg:
        with subtests.test("the member's CANCEL of its re-INVITE reaches the caller"):
            call = place_call(alg, caller, member)
            branch = new_branch()
            member.send(call.callee.request("INVITE", branch=branch), alg.listen)
            caller.expect("INVITE ")
            member.send(call.callee.request("CANCEL", cseq=call.callee.cseq, branch=branch), alg.listen)
            peer, _ = expect_any([caller, member], "CANCEL ")
            assert peer is caller, "the member's CANCEL came back to the member"

        with subtests.test("the caller's CANCEL of its INVITE reaches the member, on the INVITE's branch"):
            drain(caller, member)
            call_id, from_tag, branch = f"{new_token()}@caller", new_token(), new_branch()
            caller.send(
                initial_request("INVITE", caller, alg, call_id=call_id, from_tag=from_tag, branch=branch), alg.listen
            )
            invite = member.expect("INVITE ")
            member.send(build_response(invite, 180, "Ringing", to_tag="ring"), alg.listen)
            caller.expect("SIP/2.0 180")
            cancel = initial_request("CANCEL", caller, alg, call_id=call_id, from_tag=from_tag, branch=branch)
            caller.send(cancel, alg.listen)
            peer, got = expect_any([member, caller], "CANCEL ")
            assert peer is member
            assert param(got.values("via")[0], "branch") == param(invite.values("via")[0], "branch")
            member.send(build_response(got, 200, "OK", to_tag="ring"), alg.listen)
            caller.expect("SIP/2.0 200")
            member.send(build_response(invite, 487, "Request Terminated", to_tag="ring"), alg.listen)
            caller.expect("SIP/2.0 487")

        with subtests.test("a CANCEL for an unknown transaction gets 481"):
            drain(caller, member)
            cancel = initial_request("CANCEL", caller, alg, call_id=f"{new_token()}@nowhere", from_tag=new_token())
            caller.send(cancel, alg.listen)
            expect_any([caller, member], "SIP/2.0 481")

        with subtests.test("a strict-routed request gets its last Route back as Request-URI"):
            drain(caller, member)
            call = place_call(alg, caller, member)
            target = member.uri("bob")
            strict = call.caller.request("INFO", uri=f"sip:{HOST}:{alg.listen[1]};lr", routes=[f"<{target}>"])
            caller.send(strict, alg.listen)
            info = member.expect("INFO ")
            assert (info.uri, info.values("route")) == (target, [])
            member.send(build_response(info, 200, "OK"), alg.listen)
            caller.expect("SIP/2.0 200")


# -- 4. which requests open dialogs ----------------------------------------------------------


def test_subscribe_opens_a_dialog_and_other_out_of_dialog_requests_reach_a_member(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer, subtests: pytest.Subtests
) -> None:
    """§12 and RFC 6665: SUBSCRIBE creates a dialog like INVITE, so it must be record-routed
    and its in-dialog traffic routed both ways; requests without a To tag are new requests
    (REFER, NOTIFY, MESSAGE) and go to a member; only a To tag of no dialog is 481."""
    with running_alg(tmp_path, [member]) as alg:
        route = route_of(alg)
        call_id, from_tag = f"{new_token()}@subscriber", new_token()
        event = ["Event: presence", "Expires: 60"]
        caller.send(
            initial_request("SUBSCRIBE", caller, alg, call_id=call_id, from_tag=from_tag, extra=event), alg.listen
        )
        subscribe = member.expect("SUBSCRIBE ")
        with subtests.test("SUBSCRIBE is record-routed"):
            assert subscribe.values("record-route") == [route]
        member.send(
            build_response(
                subscribe, 200, "OK", to_tag="notifier", contact=f"<{member.uri('bob')}>", extra=["Expires: 60"]
            ),
            alg.listen,
        )
        ok = caller.expect("SIP/2.0 200")
        subscriber = Leg(caller, call_id, ok.first("from") or "", ok.first("to") or "", member.uri("bob"), [route])
        notifier = Leg(member, call_id, ok.first("to") or "", ok.first("from") or "", caller.uri("alice"), [route], 0)

        with subtests.test("the refresh SUBSCRIBE reaches the member"):
            caller.send(subscriber.request("SUBSCRIBE", extra=event), alg.listen)
            _, refresh = expect_any([member, caller], "SUBSCRIBE ")
            member.send(build_response(refresh, 200, "OK", extra=["Expires: 60"]), alg.listen)
            caller.expect("SIP/2.0 200")

        with subtests.test("the member's NOTIFY reaches the subscriber"):
            drain(caller, member)
            notify = notifier.request("NOTIFY", extra=["Event: presence", "Subscription-State: active;expires=60"])
            member.send(notify, alg.listen)
            peer, got = expect_any([caller, member], "NOTIFY ")
            assert peer is caller, "the NOTIFY came back to the member"
            caller.send(build_response(got, 200, "OK"), alg.listen)
            member.expect("SIP/2.0 200")

        for method, extra in (
            ("REFER", [f"Refer-To: <sip:carol@{HOST}>"]),
            ("NOTIFY", ["Event: presence", "Subscription-State: active"]),
            ("MESSAGE", ["Content-Type: text/plain"]),
        ):
            with subtests.test(f"an out-of-dialog {method} reaches a member"):
                drain(caller, member)
                body = b"hello" if method == "MESSAGE" else b""
                request = initial_request(
                    method, caller, alg, call_id=f"{new_token()}@caller", from_tag=new_token(), extra=extra, body=body
                )
                caller.send(request, alg.listen)
                peer, _ = expect_any([member, caller], f"{method} ")
                assert peer is member

        with subtests.test("a BYE with a To tag for a Call-ID never seen gets 481"):
            drain(caller, member)
            bye = initial_request(
                "BYE",
                caller,
                alg,
                call_id=f"{new_token()}@nowhere",
                from_tag=new_token(),
                to_tag="never",
                cseq=2,
                routes=[route],
            )
            caller.send(bye, alg.listen)
            expect_any([caller, member], "SIP/2.0 481")


# -- 5. framing ------------------------------------------------------------------------------


def test_framing_max_forwards_and_content_length_are_read_as_rfc_3261_says(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer, subtests: pytest.Subtests
) -> None:
    """§20.22: Max-Forwards is 0-255 with leading zeros allowed; §18.3: octets past
    Content-Length are dropped on UDP, a Content-Length larger than the datagram (or two that
    disagree) is a 400."""
    with running_alg(tmp_path, [member]) as alg:

        def invite(**options: Any) -> bytes:
            return initial_request(
                "INVITE", caller, alg, call_id=f"{new_token()}@caller", from_tag=new_token(), **options
            )

        with subtests.test("Max-Forwards: 0068 is forwarded as 67"):
            caller.send(invite(max_forwards="0068"), alg.listen)
            _, got = expect_any([member, caller], "INVITE ")
            assert got.first("max-forwards") == "67"

        with subtests.test("Max-Forwards: 300 gets 400"):
            drain(caller, member)
            caller.send(invite(max_forwards="300"), alg.listen)
            expect_any([caller, member], "SIP/2.0 400")

        with subtests.test("octets after Content-Length bytes of body are cut off"):
            drain(caller, member)
            caller.send(invite(extra=["Content-Type: text/plain"], body=b"hello") + b"EXTRA OCTETS", alg.listen)
            _, got = expect_any([member, caller], "INVITE ")
            assert (got.first("content-length"), got.body) == ("5", b"hello")

        with subtests.test("two Content-Lengths (5 and l: 13) get 400"):
            drain(caller, member)
            both = invite(extra=["Content-Type: text/plain", "l: 13"], body=b"hello, world!", content_length="5")
            caller.send(both, alg.listen)
            expect_any([caller, member], "SIP/2.0 400")

        with subtests.test("Content-Length larger than the body gets 400"):
            drain(caller, member)
            caller.send(invite(extra=["Content-Type: text/plain"], body=b"hello", content_length="50"), alg.listen)
            expect_any([caller, member], "SIP/2.0 400")


# -- 6. validation ---------------------------------------------------------------------------


def test_version_proxy_require_and_uri_scheme_get_their_own_status_codes(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer, subtests: pytest.Subtests
) -> None:
    """§16.3: an unsupported SIP version is 505, an unsupported Proxy-Require option 420 with
    Unsupported naming it, a Request-URI scheme the proxy cannot route 416."""
    with running_alg(tmp_path, [member]) as alg:

        def invite(**options: Any) -> bytes:
            return initial_request(
                "INVITE", caller, alg, call_id=f"{new_token()}@caller", from_tag=new_token(), **options
            )

        with subtests.test("SIP/7.0 gets 505"):
            caller.send(invite().replace(b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1), alg.listen)
            expect_any([caller, member], "SIP/2.0 505")

        with subtests.test("Proxy-Require: foo gets 420 with Unsupported: foo"):
            drain(caller, member)
            caller.send(invite(extra=["Proxy-Require: foo"]), alg.listen)
            _, reply = expect_any([caller, member], "SIP/2.0 420")
            assert reply.values("unsupported") == ["foo"]

        with subtests.test("INVITE foo:bar gets 416"):
            drain(caller, member)
            uri = f"sip:bob@{HOST}:{alg.listen[1]}"
            caller.send(invite().replace(f"INVITE {uri} ".encode(), b"INVITE foo:bar ", 1), alg.listen)
            expect_any([caller, member], "SIP/2.0 416")


# -- 7. response next hop --------------------------------------------------------------------


def test_responses_reach_a_via_host_name_or_its_maddr_and_the_alg_keeps_serving(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer, subtests: pytest.Subtests
) -> None:
    """§18.2.2: a response goes to the next Via's sent-by, which may be a host name to
    resolve, or to its maddr when present; an unresolvable name must not stop the ALG."""
    with running_alg(tmp_path, [member]) as alg:

        def busy_via(next_via: Callable[[str], str]) -> None:
            """INVITE in; the member answers 486 with the Via below the ALG's replaced."""
            branch = new_branch()
            caller.send(
                initial_request(
                    "INVITE", caller, alg, call_id=f"{new_token()}@caller", from_tag=new_token(), branch=branch
                ),
                alg.listen,
            )
            invite = member.expect("INVITE ")
            vias = invite.values("via")
            vias[1] = next_via(branch)
            member.send(build_response(invite, 486, "Busy Here", to_tag="busy", vias=vias), alg.listen)
            caller.expect("SIP/2.0 486")

        with subtests.test("next Via sent-by localhost:PORT"):
            busy_via(lambda branch: f"SIP/2.0/UDP localhost:{caller.port};branch={branch}")

        with subtests.test("next Via with maddr=127.0.0.1 and an unresolvable host"):
            drain(caller, member)
            busy_via(lambda branch: f"SIP/2.0/UDP x.invalid:{caller.port};branch={branch};maddr={HOST}")

        with subtests.test("the ALG is alive and a normal call works"):
            drain(caller, member)
            assert alg.process is not None and alg.process.poll() is None, "the ALG exited"
            hang_up(alg, place_call(alg, caller, member))


# -- 8. member health ------------------------------------------------------------------------


def test_member_health_counts_any_response_and_never_strands_a_call(
    tmp_path: Path, caller: UdpPeer, subtests: pytest.Subtests
) -> None:
    """A member's answers to calls prove it alive as well as probe answers do; with no member
    up a call is still worth trying (503 is sure failure); only the member's own address can
    answer its probe; and a 2xx without our Record-Route means we will never see that call's
    BYE, so it must not count as active for hours."""
    with subtests.test("members answering calls but not OPTIONS stay in service"), ExitStack() as stack:
        members = [stack.enter_context(UdpPeer(f"member-{n}")) for n in "ab"]
        alg = stack.enter_context(running_alg(tmp_path / "quiet-probes", members, HEALTH_FAST))
        stop_at = time.monotonic() + 3.0
        while time.monotonic() < stop_at:
            caller.send(
                initial_request("INVITE", caller, alg, call_id=f"{new_token()}@c", from_tag=new_token()), alg.listen
            )
            peer, invite = expect_any([*members, caller], "INVITE ")
            peer.send(build_response(invite, 486, "Busy Here", to_tag="busy"), alg.listen)
            caller.expect("SIP/2.0 486")
            time.sleep(0.05)
        status = fresh_status(alg)
        health = [(m.up, m.missed_probes) for m in status.members]
        assert status.counters.member_down_events == 0, health
        reached = set()
        for _ in members:
            caller.send(
                initial_request("INVITE", caller, alg, call_id=f"{new_token()}@c", from_tag=new_token()), alg.listen
            )
            reached.add(expect_any([*members, caller], "INVITE ")[0].name)
        assert reached == {"member-a", "member-b"}

    with subtests.test("with every member down a new INVITE is still forwarded and counted"):
        drain(caller)
        with ExitStack() as stack:
            members = [stack.enter_context(UdpPeer(f"member-{n}")) for n in "ab"]
            alg = stack.enter_context(running_alg(tmp_path / "all-down", members, HEALTH_FAST))
            ups = status_value(alg, lambda s: [m.up for m in s.members], [False, False], timeout=3.0)
            assert ups == [False, False], "silent members were not taken out"
            before = fresh_status(alg).counters
            caller.send(
                initial_request("INVITE", caller, alg, call_id=f"{new_token()}@c", from_tag=new_token()), alg.listen
            )
            peer, _ = expect_any([*members, caller], "INVITE ")
            assert peer is not caller
            calls = status_value(alg, lambda s: s.counters.calls, before.calls + 1)
            assert calls == before.calls + 1

    with subtests.test("a probe answer from another address does not bring a member back"):
        drain(caller)
        with ExitStack() as stack:
            silent = stack.enter_context(UdpPeer("member"))
            spoofer = stack.enter_context(UdpPeer("spoofer"))
            alg = stack.enter_context(running_alg(tmp_path / "spoofed", [silent], HEALTH_FAST))
            assert status_value(alg, member_up(), False, timeout=3.0) is False, "a silent member stayed up"
            probe = silent.probes[-1]
            spoofer.send(build_response(probe, 200, "OK", to_tag="spoof"), alg.listen)
            time.sleep(0.4)
            status = fresh_status(alg)
            assert (status.members[0].up, status.counters.member_up_events) == (False, 0)
            silent.answer_options = True  # the member itself answering does bring it back
            assert status_value(alg, member_up(), True, timeout=2.0) is True

    with subtests.test("a 2xx without our Record-Route ends the call's active count"):
        drain(caller)
        with UdpPeer("member", answer_options=True) as member:
            config = "[dialogs]\nterminated_linger_s = 1.0\n"
            with running_alg(tmp_path / "no-record-route", [member], config) as alg:
                caller.send(
                    initial_request("INVITE", caller, alg, call_id=f"{new_token()}@c", from_tag=new_token()), alg.listen
                )
                invite = member.expect("INVITE ")
                member.send(
                    build_response(
                        invite, 200, "OK", to_tag="unrouted", record_route=False, contact=f"<{member.uri('bob')}>"
                    ),
                    alg.listen,
                )
                ok = caller.expect("SIP/2.0 200")
                assert ok.values("record-route") == []
                assert status_value(alg, active_calls(), 0, timeout=1.5) == 0


@pytest.mark.sipp
def test_two_sipp_members_without_auto_answer_take_300_calls(tmp_path: Path) -> None:
    """Stock `sipp -sn uas` never answers OPTIONS; its 180s and 200s must keep it in service."""
    with ExitStack() as stack:
        members = []
        for name in "ab":
            uas = SippUas(tmp_path, name=f"member-{name}", auto_answer=False, timeout=120)
            stack.enter_context(uas)
            members.append(uas)
        alg = stack.enter_context(
            AlgProcess((HOST, free_port()), [uas.address for uas in members], tmp_path, config_text=FAST_PROBES)
        )
        result = SippUac(alg.listen, tmp_path, calls=300, rate=50, extra_args=["-nr"]).start().wait()
        assert (result.failed_calls, result.successful_calls) == (0, 300), result.summary()
        assert result.ok, result.summary()
        status = fresh_status(alg)  # (idle again, the members may look down by now: that is fine)
        assert [member.calls for member in status.members] == [150, 150]
        assert status.counters.rejected == {}


# -- 10. state only for requests that pass ---------------------------------------------------


def test_only_requests_that_pass_every_check_change_dialog_state(
    tmp_path: Path, caller: UdpPeer, member: UdpPeer, subtests: pytest.Subtests
) -> None:
    """A request rejected (400) must leave no trace: no dialog opened, none ended. A request
    whose tags match no dialog of a live Call-ID is 481 (§16.6, §12.2.2), not the call's."""
    with running_alg(tmp_path, [member]) as alg:
        bad_route = ["<sip:@>"]

        with subtests.test("a new INVITE with a malformed Route gets 400 and opens no dialog"):
            calls_before = read_status(alg).counters.calls
            caller.send(
                initial_request(
                    "INVITE", caller, alg, call_id=f"{new_token()}@c", from_tag=new_token(), routes=bad_route
                ),
                alg.listen,
            )
            expect_any([caller, member], "SIP/2.0 400")
            time.sleep(0.2)
            status = fresh_status(alg)
            assert (status.members[0].active_calls, status.counters.calls) == (0, calls_before)

        drain(caller, member)
        baseline = fresh_status(alg).members[0].active_calls  # 0 unless the step above failed
        call = place_call(alg, caller, member)
        assert status_value(alg, active_calls(), baseline + 1) == baseline + 1
        real_from = param(call.caller.local, "tag")

        with subtests.test("a BYE with the live Call-ID, wrong tags and a malformed Route gets 400, call stays"):
            bye = call.caller.request(
                "BYE",
                routes=bad_route,
                local=f"<{caller.uri('alice')}>;tag=wrong-from",
                remote=f"<sip:bob@{HOST}>;tag=wrong-to",
            )
            caller.send(bye, alg.listen)
            expect_any([caller, member], "SIP/2.0 400")
            time.sleep(0.2)
            assert fresh_status(alg).members[0].active_calls == baseline + 1

        for method, from_tag in (("BYE", real_from), ("INFO", "wrong-from"), ("INVITE", real_from)):
            with subtests.test(f"a {method} with the live Call-ID and tags of no dialog gets 481"):
                drain(caller, member)
                request = call.caller.request(
                    method,
                    local=f"<{caller.uri('alice')}>;tag={from_tag}",
                    remote=f"<sip:bob@{HOST}>;tag=no-such-dialog",
                )
                caller.send(request, alg.listen)
                expect_any([caller, member], "SIP/2.0 481")

        with subtests.test("an ACK with the live Call-ID and tags of no dialog is dropped"):
            drain(caller, member)
            ack = call.caller.request("ACK", cseq=1, remote=f"<sip:bob@{HOST}>;tag=no-such-dialog")
            caller.send(ack, alg.listen)
            member.expect_nothing(0.5)
            caller.expect_nothing(0.1)

        with subtests.test("the caller's real BYE still reaches the member"):
            drain(caller, member)
            hang_up(alg, call)
            assert status_value(alg, active_calls(), baseline, timeout=2.0) == baseline
