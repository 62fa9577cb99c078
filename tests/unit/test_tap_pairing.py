"""Tap mode: log entries carry digests; the shadow pairs them with tapped copies, in log order."""

from __future__ import annotations

import asyncio

from sipshadow.core import DatagramReceived, Gateway, GatewayConfig, MemberSpec
from sipshadow.determinism import RecordingEntropy, SystemEntropy
from sipshadow.replication.log import entry_for, payload_digest
from sipshadow.replication.replica import Replica
from sipshadow.replication.shadow import ShadowLink
from sipshadow.replication.tap import TapBuffer
from sipshadow.replication.wire import Entries, FrameDecoder, PayloadRequest, Payloads, Snapshot
from tests.unit.messages import ALG, CALLER, MEMBERS, request

KEY = b"t" * 32
CONFIG = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0)
DATAGRAMS = [request("INVITE", call_id=f"c{i}", branch=f"z9hG4bK{i}") for i in range(3)]


def test_copies_are_claimed_by_digest_and_source_oldest_first() -> None:
    tap = TapBuffer()
    tap.add(b"same", CALLER, 0.0)
    tap.add(b"same", CALLER, 0.1)
    tap.add(b"same", MEMBERS[0], 0.2)
    assert tap.claim(payload_digest(b"same"), MEMBERS[0]) == b"same"
    assert tap.claim(payload_digest(b"same"), CALLER) == b"same"
    assert tap.unclaimed() == [(b"same", CALLER)]
    assert tap.claim(payload_digest(b"other"), CALLER) is None


def test_copies_the_log_never_claims_are_pruned_after_the_horizon() -> None:
    tap = TapBuffer(horizon_s=1.0)
    tap.add(b"lost by the primary", CALLER, 0.0)
    tap.add(b"recent", CALLER, 0.9)
    tap.prune(1.5)
    assert tap.unclaimed() == [(b"recent", CALLER)] and tap.pruned == 1


class Wire:
    """Stands in for the TCP transport: records the frames the shadow writes."""

    def __init__(self) -> None:
        self.frames: list[object] = []
        self._decoder = FrameDecoder(KEY)

    def write(self, data: bytes) -> None:
        self.frames.extend(self._decoder.feed(data))

    def close(self) -> None:
        pass


def primary_entries() -> tuple[Gateway, list]:
    recorder = RecordingEntropy(SystemEntropy(3))
    primary = Gateway(CONFIG, recorder)
    entries = []
    for seq, data in enumerate(DATAGRAMS, start=1):
        event = DatagramReceived(data, CALLER, float(seq))
        primary.handle(event)
        entries.append(entry_for(seq, event, recorder.take(), primary.state_digest(), with_payload=False))
    return primary, entries


async def tap_mode_shadow() -> tuple[ShadowLink, Wire, TapBuffer]:
    tap = TapBuffer()
    link = ShadowLink(Replica(CONFIG), ("127.0.0.1", 1), key=KEY, node_id="s", epoch=lambda: 0,
                      gate=lambda outputs: None, tap=tap, payload_wait_s=0.01)  # fmt: skip
    wire = Wire()
    link._transport = wire  # type: ignore[assignment]
    link._on_message(Snapshot(0, 0, Gateway(CONFIG, SystemEntropy()).export_state()))
    return link, wire, tap


def test_entries_wait_for_their_tapped_copy_and_apply_in_log_order() -> None:
    async def scenario() -> None:
        primary, entries = primary_entries()
        link, _, tap = await tap_mode_shadow()
        tap.add(DATAGRAMS[1], CALLER, 0.0)  # the tap delivers out of log order
        link._on_message(Entries(entries, released=0))
        assert link.replica.applied_seq == 0  # entry 1's copy has not arrived
        tap.add(DATAGRAMS[0], CALLER, 0.0)
        tap.add(DATAGRAMS[2], CALLER, 0.0)
        link.drain()
        assert link.replica.applied_seq == 3
        assert link.replica.gateway.state_digest() == primary.state_digest()
        await link.close()

    asyncio.run(scenario())


def test_a_copy_the_tap_lost_is_asked_of_the_primary() -> None:
    async def scenario() -> None:
        primary, entries = primary_entries()
        link, wire, tap = await tap_mode_shadow()
        tap.add(DATAGRAMS[0], CALLER, 0.0)
        tap.add(DATAGRAMS[2], CALLER, 0.0)
        link._on_message(Entries(entries, released=0))
        await asyncio.sleep(0.05)
        requests = [frame for frame in wire.frames if isinstance(frame, PayloadRequest)]
        assert requests == [PayloadRequest([2])]
        link._on_message(Payloads([(2, DATAGRAMS[1])]))
        assert link.replica.applied_seq == 3
        assert link.replica.gateway.state_digest() == primary.state_digest()
        await link.close()

    asyncio.run(scenario())
