"""One fixed stream of events through a fresh core; prints what came out, hashed, as JSON.

Run twice, with SIPSHADOW_PURE=1 and without (tests/unit/test_native_build.py): the compiled
build and the pure-Python sources must give byte-identical outputs and state digests. The
stream: whole calls (INVITE, 100, 180, 200, ACK, BYE, 200) with records on and the
weighted-random policy drawing from a seeded entropy; every RFC 4475 torture message; seeded
byte mutations of both; CANCELs, stray responses, OPTIONS for the ALG; timers that reap.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from core_calls import IN_DIALOG, INVITE, SDP, respond  # noqa: E402
from sipshadow import _native  # noqa: E402
from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived  # noqa: E402
from sipshadow.core.events import SetClock, TimerExpired  # noqa: E402

ALG, CALLER = ("127.0.0.1", 5060), ("127.0.0.1", 5061)
MEMBERS = (("127.0.0.1", 5070), ("127.0.0.1", 5071), ("127.0.0.1", 5072))
TORTURE = sorted((ROOT / "tests" / "data" / "rfc4475").glob("*.dat"))


class SeededEntropy:
    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def random(self) -> float:
        return self._random.random()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few bytes flipped, dropped or doubled."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buffer:
            break
        at = rng.randrange(len(buffer))
        choice = rng.random()
        if choice < 0.4:
            buffer[at] = rng.randrange(256)
        elif choice < 0.7:
            del buffer[at]
        else:
            buffer[at:at] = buffer[at : at + rng.randint(1, 8)]
    return bytes(buffer)


def main(calls: int) -> None:
    config = GatewayConfig(ALG, tuple(MemberSpec(m, weight=w) for m, w in zip(MEMBERS, (1, 2, 3), strict=True)),
                           policy="weighted-random", probe_interval_s=5.0, call_records=True)  # fmt: skip
    gateway = Gateway(config, SeededEntropy(11))
    rng = random.Random(5)
    digest = hashlib.sha256()
    events = 0

    def feed(event: object) -> list:  # type: ignore[type-arg]
        nonlocal events
        outputs = gateway.handle(event)  # type: ignore[arg-type]
        events += 1
        for output in outputs:
            digest.update(repr((output.data, output.destination, output.transport)).encode())
        digest.update(gateway.state_digest().to_bytes(8, "big", signed=False))
        return outputs

    feed(SetClock(1_790_000_000.0, 0.0))
    now = 0.0
    for n in range(calls):
        now += 0.01
        invite = INVITE.format(n=n, length=len(SDP), body=SDP).encode()
        forwarded = feed(MessageReceived(invite, CALLER, now))
        if not forwarded:
            continue
        member = forwarded[0].destination
        outcome = n % 5
        for status, reason in ((100, "Trying"), (180, "Ringing")):
            feed(MessageReceived(respond(forwarded[0].data, status, reason, n), member, now))
        if outcome == 1:  # cancelled while ringing
            cancel = invite.replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL")
            feed(MessageReceived(cancel, CALLER, now))
            feed(MessageReceived(respond(forwarded[0].data, 487, "Request Terminated", n), member, now))
            continue
        if outcome == 2:  # busy
            feed(MessageReceived(respond(forwarded[0].data, 486, "Busy Here", n), member, now))
            continue
        feed(MessageReceived(respond(forwarded[0].data, 200, "OK", n), member, now))
        feed(MessageReceived(IN_DIALOG.format(method="ACK", n=n, cseq=1, step=2).encode(), CALLER, now))
        if outcome == 3:  # left up: the timers reap it
            continue
        bye = feed(MessageReceived(IN_DIALOG.format(method="BYE", n=n, cseq=2, step=3).encode(), CALLER, now))
        if bye:
            feed(MessageReceived(respond(bye[0].data, 200, "OK", n), member, now))
        feed(MessageReceived(mutate(invite, rng), CALLER, now))
        if n % 7 == 0:
            feed(TimerExpired(now))
    for path in TORTURE:
        data = path.read_bytes()
        for _ in range(3):
            feed(MessageReceived(data, CALLER, now))
            feed(MessageReceived(data, MEMBERS[0], now))
            data = mutate(data, rng)
    for step in range(1, 40):  # hours later: every dialog reaped, probe rounds
        feed(TimerExpired(now + step * 600.0))
    for source in _native.sources():  # the ones this stream does not reach count too
        importlib.import_module(f"sipshadow.{source.parent.name}.{source.stem}")
    print(json.dumps({"state": _native.STATE, "compiled_modules": len(_native.compiled_modules()), "events": events,
                      "digest": digest.hexdigest(), "state_digest": gateway.state_digest(),
                      "counters": repr(gateway.counters)}))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
