"""Whole calls through a primary and its shadow wired in memory (the real recorder, follower,
sealed link and wire format); prints the RSS growth as JSON, like tests/native/leak.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests" / "unit"), str(ROOT / "tests" / "native")]

from leak import CONFIG, rss_kib  # noqa: E402
from replication_pair import Pair  # noqa: E402

from core_calls import CALLER, IN_DIALOG, INVITE, SDP, respond  # noqa: E402
from sipshadow import _native  # noqa: E402


def main(calls: int) -> None:
    pair = Pair(CONFIG)
    pair.connect()
    pair.deliver()
    warm, start = calls // 4, 0
    for n in range(calls):
        invite = INVITE.format(n=n, length=len(SDP), body=SDP).encode()
        (forwarded,) = pair.datagram(invite, CALLER)
        member = forwarded.destination
        for status, reason in ((100, "Trying"), (180, "Ringing"), (200, "OK")):
            pair.datagram(respond(forwarded.data, status, reason, n), member)
        pair.datagram(IN_DIALOG.format(method="ACK", n=n, cseq=1, step=2).encode(), CALLER)
        bye, *_ = pair.datagram(IN_DIALOG.format(method="BYE", n=n, cseq=2, step=3).encode(), CALLER)
        pair.datagram(respond(bye.data, 200, "OK", n), member)
        pair.advance(0.05)
        pair.deliver()
        pair.sent.clear()  # the harness keeps what the primary let out: not the node's memory
        if n % 100 == 0:
            pair.timer()
        if n == warm:
            start = rss_kib()
    grown = rss_kib() - start
    print(json.dumps({"state": _native.STATE, "compiled_modules": len(_native.compiled_modules()),
                      "calls_measured": calls - warm, "rss_growth_kib": grown,
                      "dropped": len(pair.dropped)}))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
