"""A forged final response cannot end a ringing call (RFC 3261 §16.7, §26.1.5; real sockets).

A real SIPp UAC calls through a real `sipshadow serve` on 127.0.0.1; the member is the test's
own UDP socket (`sip_peers.UdpPeer`), so the test sees the INVITE the ALG forwarded, branch and
all. While the call rings, a third socket sends a 486 that copies that INVITE's Via stack,
Call-ID, CSeq and tags exactly: everything an attacker who guessed or sniffed the branch could
write, except the address the ALG sent the INVITE to. The ALG must drop it (counted in
`forged_responses`), keep the call ringing, and relay the real member's 200 afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUac, free_port
from sipshadow.runtime.status import StatusDocument
from tests.integration.sip_peers import HOST, UdpPeer, build_response, new_token, param

pytestmark = [pytest.mark.sipp, pytest.mark.timeout(120)]

#: No probes: the member socket then sees only the call, and `responses` counts only ours.
CONFIG = "[health]\nprobe_interval_ms = 0\n[status]\ninterval_s = 0.1\n"
RINGING_S = 1.5  # how long the call keeps ringing after the forgery, before the member answers


def status_when(alg: AlgProcess, ready: Callable[[StatusDocument], bool], timeout_s: float = 5.0) -> StatusDocument:
    """The first status document for which `ready` holds (the file lags the ALG by 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = alg.status()
            if ready(status):
                return status
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, "the ALG's status never got there"
        time.sleep(0.03)


def test_a_forged_486_from_a_third_address_neither_ends_the_ringing_call_nor_reaches_the_caller(
    tmp_path: Path,
) -> None:
    with UdpPeer("member") as member, UdpPeer("forger") as forger:
        alg = AlgProcess((HOST, free_port()), [member.address], tmp_path, config_text=CONFIG)
        with alg:
            uac = SippUac(alg.listen, tmp_path, calls=1, rate=1, extra_args=["-nr", "-trace_msg"], recv_timeout=10.0)
            uac.start()
            try:
                invite = member.expect("INVITE ", timeout=5.0, note="the SIPp caller's INVITE, via the ALG")
                top_via = invite.values("via")[0]
                assert param(top_via, "branch") is not None and top_via.startswith(f"SIP/2.0/UDP {HOST}:")
                to_tag, contact = new_token(), f"<{member.uri('bob')}>"
                member.send(build_response(invite, 180, "Ringing", to_tag=to_tag, contact=contact), alg.listen)
                ringing = status_when(alg, lambda status: status.counters.responses >= 1)  # the 180 (no probes)
                assert ringing.counters.responses == 1 and ringing.members[0].active_calls == 1, ringing

                # The forgery: the INVITE's own Via stack (the ALG's branch on top), Call-ID,
                # CSeq, From and the callee's To tag, from another socket on the same host.
                forger.send(build_response(invite, 486, "Busy Here", to_tag=to_tag), alg.listen)
                after = status_when(alg, lambda status: status.counters.responses >= 2)
                assert after.counters.responses == 2, after.counters
                assert after.members[0].active_calls == 1, "the forged 486 ended the ringing call at the ALG"
                assert after.dialogs == ringing.dialogs
                assert getattr(after.counters, "forged_responses", None) == 1, after.counters
                member.expect_nothing(RINGING_S, note="the caller was never told the call failed: no ACK, no CANCEL")

                member.send(build_response(invite, 200, "OK", to_tag=to_tag, contact=contact), alg.listen)
                member.expect("ACK ", timeout=5.0, note="the caller's ACK of the real 200")
                bye = member.expect("BYE ", timeout=5.0)
                member.send(build_response(bye, 200, "OK"), alg.listen)
                result = uac.wait(timeout=20.0)
            finally:
                uac.stop()
            final = status_when(alg, lambda status: status.members[0].active_calls == 0)
    assert (result.successful_calls, result.failed_calls) == (1, 0), result.summary()
    (log,) = tmp_path.glob("*_messages.log")
    received = log.read_text(errors="replace")
    assert "SIP/2.0 180" in received and "SIP/2.0 200" in received, received
    assert "SIP/2.0 486" not in received, "the forged 486 reached the caller"
    assert final.counters.forged_responses == 1 and final.counters.stray_responses == 0, final.counters
    assert final.counters.calls == 1 and final.internal_errors == 0
