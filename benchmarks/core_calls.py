"""Core-only cost of one call (7 messages) through `Gateway.handle`, no sockets: JSON out.

Tells how much of the ALG's per-call budget the pure core takes, next to the I/O in cps.py,
and what call records add to it: rounds with records off and on alternate in one run (the
BYE then also yields the call's record, encoded), so both see the same machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived
from sipshadow.core.events import SetClock
from sipshadow.determinism import SystemEntropy

ALG, CALLER = ("127.0.0.1", 5060), ("127.0.0.1", 5061)
MEMBERS = (("127.0.0.1", 5070), ("127.0.0.1", 5071))

INVITE = (
    "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-1-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
    "To: service <sip:service@127.0.0.1:5060>\r\n"
    "Call-ID: {n}-1234@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: sip:sipp@127.0.0.1:5061\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
IN_DIALOG = (
    "{method} sip:service@127.0.0.1:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-{step}\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
    "To: service <sip:service@127.0.0.1:5060>;tag={n}SIPpTag011\r\n"
    "Call-ID: {n}-1234@127.0.0.1\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Contact: sip:sipp@127.0.0.1:5061\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
    "Content-Length: 0\r\n\r\n"
)


def respond(forwarded: bytes, status: int, reason: str, n: int) -> bytes:
    head = forwarded.split(b"\r\n\r\n", 1)[0].decode()
    keep = [
        line + (f";tag={n}SIPpTag011" if line.startswith("To:") and ";tag=" not in line else "")
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0] in ("Via", "From", "To", "Call-ID", "CSeq", "Record-Route")
    ]
    lines = [f"SIP/2.0 {status} {reason}", *keep, "Contact: <sip:127.0.0.1:5070>", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def one_call(gateway: Gateway, n: int, now: float) -> int:
    handle = gateway.handle
    invite = INVITE.format(n=n, length=len(SDP), body=SDP).encode()
    (forwarded,) = handle(MessageReceived(invite, CALLER, now))
    member = forwarded.destination
    sent = 1
    for status, reason in ((100, "Trying"), (180, "Ringing"), (200, "OK")):
        sent += len(handle(MessageReceived(respond(forwarded.data, status, reason, n), member, now)))
    for method, cseq, step in (("ACK", 1, 2), ("BYE", 2, 3)):
        request = IN_DIALOG.format(method=method, n=n, cseq=cseq, step=step).encode()
        forwarded, *record = handle(MessageReceived(request, CALLER, now))  # the BYE's record, when on
        sent += 1 + len(record)
    sent += len(handle(MessageReceived(respond(forwarded.data, 200, "OK", n), member, now)))
    return sent


def timed(calls: int, *, records: bool) -> float:
    """Seconds for `calls` calls through a fresh gateway."""
    config = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0, call_records=records)
    gateway = Gateway(config, SystemEntropy(1))
    gateway.handle(SetClock(1_790_000_000.0, 0.0))
    start = time.perf_counter()
    for n in range(calls):
        one_call(gateway, n, 0.0)
    return time.perf_counter() - start


def main(calls: int = 20000, rounds: int = 5) -> None:
    per_round = max(1, calls // rounds)
    off: list[float] = []
    on: list[float] = []
    for _ in range(rounds):  # alternating, so drift on a shared machine hits both alike
        off.append(timed(per_round, records=False))
        on.append(timed(per_round, records=True))
    calls = per_round * rounds
    total = sum(off)
    # Messages are built before timing would be fairer, but building is a small share here;
    # measure it separately so the figure is the core's own.
    build_start = time.perf_counter()
    for n in range(calls):
        INVITE.format(n=n, length=len(SDP), body=SDP).encode()
    build = (time.perf_counter() - build_start) * 4  # ~4 heavy builds per call
    print(
        json.dumps(
            {
                "benchmark": "core_calls",
                "calls": calls,
                "messages_per_call": 7,
                "us_per_call_including_message_building": round(total / calls * 1e6, 1),
                "us_per_call_core_estimate": round((total - build) / calls * 1e6, 1),
                "records": {
                    "us_per_call_off_median_round": round(statistics.median(off) / per_round * 1e6, 1),
                    "us_per_call_on_median_round": round(statistics.median(on) / per_round * 1e6, 1),
                    "on_over_off": round(statistics.median(on) / statistics.median(off), 3),
                },
                "python": sys.version.split()[0],
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
