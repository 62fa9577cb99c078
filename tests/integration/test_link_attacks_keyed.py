"""Attacks by a stranger who holds the pair's key (a second pair given the same key by mistake), black box on loopback.

The stranger is node "intruder-c": it knows the key, but it is not the peer either node was
configured with. It speaks whatever protocol the code under test speaks, told by import: on a
link of HMAC'd frames and no sessions (`sipshadow.detect.heartbeat.encode` exists) it sends
v1 frames signed with the key; on a link of sessions bound to node ids it is a full node, with
the node's own `DatagramChannel`, `StreamChannel` and `Peering`, and does a real handshake
(Offer, then sealed beats or a sealed Hello once an Answer comes). Either way it tries as hard
as the key lets it. The pair must refuse it as foreign: no step-down, no epoch adopted from it,
no snapshot for it. Only status documents, logs and the bytes on the wire are looked at.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sipshadow.detect.heartbeat as heartbeat
from sipshadow.lab.sipp import SippUas
from tests.integration.mitm import abort
from tests.integration.test_link_attacks import (
    HANDSHAKE_BYTES,
    LinkPair,
    shadow_of,
    stack,
    started_pair,
    wait_until,
)

pytestmark = pytest.mark.sipp

Address = tuple[str, int]
#: `stack` is the sibling module's fixture (everything a test starts is undone at teardown), used here by name.
__all__ = ["stack"]

#: The code under test signs v1 frames with the key and has no sessions (the attacker follows suit).
SPEAKS_V1 = hasattr(heartbeat, "encode")
INTRUDER = "intruder-c"
#: The intruder beats as often as the pair does (heartbeat_interval_ms = 10).
BEAT_INTERVAL_S = 0.01
ATTACK_S = 1.0
#: The bound a beat's epoch must keep (`heartbeat.MAX_EPOCH` on code that has one).
MAX_EPOCH = 2**32
U64_MAX = 2**64 - 1
TAKEOVER_S = 1.0


def pair_key(pair: LinkPair) -> bytes:
    """The pre-shared key both nodes were configured with (the stranger's copy of it)."""
    keys = {key for config in pair.configs.values() for key in re.findall(r'^key = "(.*)"$', config, re.M)}
    assert len(keys) == 1, f"harness: not one key for both nodes ({len(keys)})"
    return keys.pop().encode()


def ha_document(pair: LinkPair, name: str) -> dict[str, Any]:
    """The `ha` section of a node's status file, as JSON (fields the code under test may lack)."""
    document: dict[str, Any] = json.loads(pair.nodes[name].status_file.read_text())
    return document.get("ha") or {}


def foreign_alarm(ha: dict[str, Any]) -> bool:
    return any("foreign" in alarm for alarm in ha.get("alarms", []))


def log_of(pair: LinkPair, name: str) -> str:
    return pair.nodes[name].log_file.read_text(errors="replace")


# -- the stranger ---------------------------------------------------------------------------


@dataclass
class BeatReport:
    """What one beating stranger did and got back."""

    offers: int = 0  #: handshake Offers sent (new protocol: until an Answer comes)
    answers: int = 0  #: datagrams the target sent back
    beats: int = 0  #: beats sent: HMAC'd v1 frames, or sealed under a session the target agreed to
    session: bool = False  #: the target completed a handshake with the stranger


class StrangerBeats:
    """`INTRUDER` beats `role` in `epoch` at `target` for `duration_s`, in a thread, from its own
    UDP socket (which hears the target's answers); a context manager that stops it on exit."""

    def __init__(self, key: bytes, target: Address, *, role: str, epoch: int, duration_s: float = ATTACK_S) -> None:
        self.key = key
        self.target = target
        self.role = role
        self.epoch = epoch
        self.duration_s = duration_s
        self.report = BeatReport()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stranger-beats", daemon=True)

    def _beat(self) -> Any:
        return heartbeat.Heartbeat(INTRUDER, self.epoch, self.role, 0, time.monotonic())

    def _run(self) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                (self._run_v1 if SPEAKS_V1 else self._run_sessions)(sock)
        except BaseException as error:  # raised on exit: a broken attacker proves nothing
            self.error = error

    def _run_v1(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + self.duration_s
        while time.monotonic() < deadline and not self._stop.is_set():
            sock.sendto(heartbeat.encode(self._beat(), self.key), self.target)
            self.report.beats += 1
            self._drain(sock, lambda data, source: None)

    def _run_sessions(self, sock: socket.socket) -> None:
        from sipshadow.link import NONCE_BYTES, DatagramChannel, Peering

        # a full node: any peer id will do (an Offer to "" names no recipient), its own id is INTRUDER
        channel = DatagramChannel(heartbeat.CODEC, Peering(self.key, INTRUDER, None),
                                  nonce=secrets.token_bytes(NONCE_BYTES))  # fmt: skip

        def answered(data: bytes, source: Address) -> None:
            received = channel.receive(data)
            if received.write:
                sock.sendto(received.write, source)

        deadline = time.monotonic() + self.duration_s
        while time.monotonic() < deadline and not self._stop.is_set():
            sealed = channel.seal(self._beat())
            if sealed is None:
                sock.sendto(channel.offer(), self.target)
                self.report.offers += 1
            else:
                sock.sendto(sealed, self.target)
                self.report.beats += 1
            self._drain(sock, answered)
            self.report.session = self.report.session or channel.session is not None

    def _drain(self, sock: socket.socket, handle: Any) -> None:
        """What the target sends back within one beat interval."""
        until = time.monotonic() + BEAT_INTERVAL_S
        while (left := until - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                return
            try:
                data, source = sock.recvfrom(65535)
            except OSError:  # ICMP: the target is gone
                continue
            self.report.answers += 1
            handle(data, source[:2])

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> StrangerBeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        assert not self._thread.is_alive(), "harness: the stranger's beat thread did not stop"
        if self.error is not None:
            raise AssertionError(f"harness: the stranger failed: {self.error!r}") from self.error

    def wait(self) -> BeatReport:
        """Block until its `duration_s` is over."""
        self._thread.join(timeout=self.duration_s + 5.0)
        return self.report


@dataclass
class AttachReport:
    """What the stranger got from the primary's replication port."""

    received: bytes = b""
    messages: list[str] = field(default_factory=list)  #: type names of the messages it could open
    session: bool = False  #: the handshake completed (new protocol)
    closed_after_s: float | None = None  #: when the primary closed the connection (None: still open)


def attach_as_shadow(stack: contextlib.ExitStack, key: bytes, target: Address, within_s: float) -> AttachReport:
    """`INTRUDER` connects to `target` and says Hello as a shadow would; reads for `within_s`
    (or until the primary closes the connection) and opens every message it can."""
    report = AttachReport()
    sock = socket.create_connection(target, timeout=2.0)
    stack.callback(abort, sock)
    opened_at = time.monotonic()
    if SPEAKS_V1:
        from sipshadow.replication.wire import FrameDecoder, Hello, encode

        decoder = FrameDecoder(key)
        sock.sendall(encode(Hello(INTRUDER, 0), key))

        def feed(data: bytes) -> bool:
            report.messages += [type(message).__name__ for message in decoder.feed(data)]
            return True
    else:
        from sipshadow.link import NONCE_BYTES, Peering, StreamChannel
        from sipshadow.replication.wire import CODEC, Hello

        channel = StreamChannel(CODEC, Peering(key, INTRUDER, None), nonce=secrets.token_bytes(NONCE_BYTES),
                                initiator=True)  # fmt: skip
        sock.sendall(channel.offer())

        def feed(data: bytes) -> bool:
            received = channel.feed(data)
            if received.ready:  # the primary answered: prove the session with a sealed Hello
                report.session = True
                sock.sendall(channel.seal([Hello(INTRUDER, 0)]))
            report.messages += [type(message).__name__ for message in received.messages]
            return received.refused is None

    deadline = opened_at + within_s
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            break
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            report.closed_after_s = time.monotonic() - opened_at
            break
        report.received += data
        if not feed(data):
            break  # what the primary sent does not open: read no further
    abort(sock)
    return report


# -- the attacks ----------------------------------------------------------------------------


def test_a_keyed_stranger_claiming_a_newer_primary_does_not_make_the_primary_step_down(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = started_pair(stack, LinkPair(tmp_path, members))
    assert wait_until(lambda: shadow_of(pair, "b").synced, 5.0), "harness: b did not sync"
    connects = shadow_of(pair, "b").connects

    roles: list[tuple[str, str]] = []
    with StrangerBeats(pair_key(pair), pair.replication_address("a"), role="primary", epoch=1000) as stranger:
        while stranger.running:
            roles.append((pair.role_of("a"), pair.role_of("b")))
            time.sleep(0.02)
    report = stranger.report

    def settled() -> bool:  # a beat or a reconnect in flight may need a moment
        shadow = shadow_of(pair, "b")
        return (
            (pair.role_of("a"), pair.role_of("b")) == ("primary", "shadow")
            and shadow.synced
            and bool(pair.status("a").replication.shadow_attached)
        )

    held = wait_until(settled, 1.0)
    a, b = ha_document(pair, "a"), ha_document(pair, "b")
    wrong = sorted({pair_roles for pair_roles in roles if pair_roles != ("primary", "shadow")})
    assert report.offers + report.beats, "harness: the stranger sent nothing"
    assert not wrong and held and a.get("step_downs") == 0, (
        f"{INTRUDER}, holding the key, sent {report.beats} beats 'primary, epoch 1000' to a for {ATTACK_S:g} s "
        f"(offers {report.offers}, session {report.session}): roles (a, b) seen {wrong or 'unchanged'}; now a is "
        f"{a.get('role')} in epoch {a.get('epoch')} after {a.get('step_downs')} step-downs, b is {b.get('role')} "
        f"in epoch {b.get('epoch')} ({b.get('takeovers') or 'no'} takeovers), b's shadow {b.get('shadow')}"
    )
    assert not report.session and report.beats == 0, f"a agreed to a session with {INTRUDER}: {report}"
    assert shadow_of(pair, "b").connects == connects, "the stranger's beats threw the real shadow off"
    refused = a.get("link_refused", {})
    assert refused.get("foreign", 0) > 0, f"a counted no foreign refusal: link_refused {refused}"
    assert foreign_alarm(a), f"a raised no foreign-node alarm: {a.get('alarms')}"


def test_an_epoch_at_the_u64_limit_is_refused_not_adopted(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = started_pair(stack, LinkPair(tmp_path, members))
    assert wait_until(lambda: shadow_of(pair, "b").synced, 5.0), "harness: b did not sync"
    key = pair_key(pair)
    # the shadow hears a primary of the highest epoch there is; the primary, a shadow of it
    # (a claim of primary would make it step down: the previous test's attack, not this one's)
    with StrangerBeats(key, pair.replication_address("b"), role="primary", epoch=U64_MAX) as at_b, \
         StrangerBeats(key, pair.replication_address("a"), role="shadow", epoch=U64_MAX) as at_a:  # fmt: skip
        at_b.wait()
        at_a.wait()
    time.sleep(0.2)
    epochs = {name: ha_document(pair, name).get("epoch") for name in ("a", "b")}
    roles = {name: pair.role_of(name) for name in ("a", "b")}

    killed_at = pair.kill("a")
    took_over = wait_until(lambda: pair.role_of("b") == "primary", 5.0)
    took_s = time.monotonic() - killed_at
    after = ha_document(pair, "b")
    rejoined_s = pair.rejoin("a", within_s=5.0) if took_over else float("inf")
    overflows = [line for line in log_of(pair, "b").splitlines() if "Overflow" in line or "ints > 2**64" in line]

    takeover = f"took over in {took_s:.2f} s" if took_over else "did not take over in 5 s"
    rejoin = f"rejoined as its shadow in {rejoined_s:.1f} s" if rejoined_s < 5 else "did not rejoin in 5 s"
    measured = (
        f"after {at_b.report.beats} beats 'primary, epoch 2**64-1' to b and {at_a.report.beats} 'shadow, epoch "
        f"2**64-1' to a (offers {at_b.report.offers} + {at_a.report.offers}, sessions {at_b.report.session} / "
        f"{at_a.report.session}): roles {roles}, epochs {epochs}; a killed: b {takeover} as {after.get('role')} "
        f"in epoch {after.get('epoch')}; a restarted {rejoin}; b's log: {overflows[:2] or 'no overflow'}"
    )
    assert all(isinstance(epoch, int) and epoch < MAX_EPOCH for epoch in epochs.values()), measured
    assert roles == {"a": "primary", "b": "shadow"}, measured
    assert took_over and took_s < TAKEOVER_S, measured
    assert isinstance(after.get("epoch"), int) and after["epoch"] < MAX_EPOCH, measured
    assert rejoined_s < 5.0 and not overflows, measured
    assert not (at_a.report.session or at_b.report.session), measured
    refused = ha_document(pair, "b").get("link_refused", {})  # a's count died with it
    assert refused.get("foreign", 0) > 0, f"b counted no foreign refusal: link_refused {refused}"


def test_a_keyed_stranger_cannot_attach_as_the_shadow(
    tmp_path: Path, members: list[SippUas], stack: contextlib.ExitStack
) -> None:
    pair = started_pair(stack, LinkPair(tmp_path, members))
    assert wait_until(lambda: shadow_of(pair, "b").synced, 5.0), "harness: b did not sync"
    connects = shadow_of(pair, "b").connects

    report = attach_as_shadow(stack, pair_key(pair), pair.replication_address("a"), within_s=3.0)
    time.sleep(1.0)
    attached = pair.status("a").replication.shadow_attached
    shadow = shadow_of(pair, "b")
    a = ha_document(pair, "a")

    closed = f"closed after {report.closed_after_s:.2f} s" if report.closed_after_s is not None else "left open"
    snapshot = [name for name in report.messages if name.startswith("Snapshot")]
    assert not snapshot and len(report.received) < HANDSHAKE_BYTES, (
        f"{INTRUDER}, holding the key, said Hello to a's replication port and got {len(report.received)} bytes "
        f"back ({len(snapshot)} snapshot frames: {report.messages[:4]}), the connection {closed}; the real "
        f"shadow reconnected {shadow.connects - connects} times, a's shadow attached: {attached}"
    )
    assert not report.session, f"a completed a handshake with {INTRUDER}"
    assert report.closed_after_s is not None, f"a kept {INTRUDER}'s connection open for 3 s"
    assert shadow.connects == connects, f"the real shadow had to reconnect {shadow.connects - connects} times"
    assert attached and shadow.synced, (attached, shadow)
    refused = a.get("link_refused", {})
    assert refused.get("foreign", 0) > 0, f"a counted no foreign refusal: link_refused {refused}"
    assert foreign_alarm(a), f"a raised no foreign-node alarm: {a.get('alarms')}"
