"""A primary and a shadow wired in memory with a hand-stepped clock (h11's connection pair).

Both sides are the real pure machines (`Recorder`, `Follower`) and every message crosses the
real wire format (sealed in a session by `sipshadow.link` channels, after a real handshake).
Nothing reads a clock or a socket: the test moves time with `advance` and frames with `deliver`.
"""

from __future__ import annotations

from sipshadow.core import Event, Gateway, GatewayConfig, MessageReceived, SendMessage, TimerExpired
from sipshadow.core.actions import Address
from sipshadow.determinism import RecordingEntropy, SystemEntropy
from sipshadow.link import Peering, StreamChannel
from sipshadow.replication.effects import Effects
from sipshadow.replication.follower import Follower, Handover
from sipshadow.replication.log import LogEntry
from sipshadow.replication.recorder import Recorder
from sipshadow.replication.tap import TapBuffer
from sipshadow.replication.wire import CODEC

KEY = b"k" * 32


class Pair:
    """`sent` holds what the primary let out to the SIP side, in order."""

    def __init__(self, config: GatewayConfig, *, seed: int = 1, tap: bool = False, output_commit: bool = True,
                 commit_timeout_s: float = 0.2) -> None:  # fmt: skip
        self.now = 0.0
        self.entropy = RecordingEntropy(SystemEntropy(seed))
        self.gateway = Gateway(config, self.entropy)
        self.recorder = Recorder(self.gateway, self.entropy, epoch=0, output_commit=output_commit,
                                 commit_timeout_s=commit_timeout_s, with_payload=not tap)  # fmt: skip
        self.follower = Follower(config, node_id="shadow", tap=TapBuffer() if tap else None)
        self.sent: list[SendMessage] = []
        self.dropped: list[str] = []
        self.lapses: list[str] = []
        self._to_shadow: list[bytes] = []
        self._to_primary: list[bytes] = []
        self._primary_channel, self._shadow_channel = channel_pair()

    # -- moving time and frames -----------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let time pass, firing both machines' deadlines as they fall due."""
        self.now += seconds
        deadline = self.recorder.next_deadline()
        if deadline is not None and deadline <= self.now:
            self._on_primary(self.recorder.on_deadline(self.now))
        deadline = self.follower.next_deadline()
        if deadline is not None and deadline <= self.now:
            self._on_shadow(self.follower.on_deadline(self.now))

    def connect(self) -> None:
        """The shadow connects and says hello; `deliver` carries the snapshot back."""
        self._on_shadow(self.follower.connected(epoch=0))

    def deliver(self) -> None:
        """Move every frame in flight, both ways, until the link is quiet."""
        while self._to_shadow or self._to_primary or self._flush():
            self._carry()

    def turn(self) -> None:
        """One loop turn of the primary's: what is in flight crosses once both ways, then the
        primary writes this turn's frames (one part of a snapshot, or the entries)."""
        self._carry()
        self._flush()

    def _carry(self) -> None:
        to_shadow, self._to_shadow = self._to_shadow, []
        for data in to_shadow:
            for message in self._shadow_channel.feed(data).messages:
                self._on_shadow(self.follower.receive(message, self.now))
        to_primary, self._to_primary = self._to_primary, []
        for data in to_primary:
            for message in self._primary_channel.feed(data).messages:
                self._on_primary(self.recorder.receive(message, self.now))

    def to_shadow_only(self) -> None:
        """Carry the primary's frames to the shadow but lose the shadow's answers."""
        self._flush()
        to_shadow, self._to_shadow = self._to_shadow, []
        for data in to_shadow:
            for message in self._shadow_channel.feed(data).messages:
                self.follower.receive(message, self.now)

    # -- the world ------------------------------------------------------------------------

    def event(self, event: Event) -> list[SendMessage]:
        """The primary's core takes `event`; returns what left at once (output commit)."""
        outputs = self.gateway.handle(event)
        released = self.recorder.record(event, outputs)
        self.sent += released
        return outputs

    def datagram(self, data: bytes, source: Address, *, tapped: bool = True) -> list[SendMessage]:
        """`data` reaches the primary (and, in tap mode, the shadow's tap unless `tapped` is off)."""
        outputs = self.event(MessageReceived(data, source, self.now))
        if tapped:
            self.tap(data, source)
        return outputs

    def tap(self, data: bytes, source: Address) -> None:
        """A copy of `data` reaches the shadow from the switch's mirror."""
        self._on_shadow(self.follower.tapped(data, source, self.now))

    def timer(self) -> list[SendMessage]:
        return self.event(TimerExpired(self.now))

    def take_over(self) -> Handover:
        return self.follower.hand_over(RecordingEntropy(SystemEntropy(99)))

    # -- inside ---------------------------------------------------------------------------

    def _flush(self) -> bool:
        frames = self.recorder.take_frames()
        if frames:
            self._to_shadow.append(self._primary_channel.seal(frames))
        return bool(frames)

    def _on_primary(self, effects: Effects) -> None:
        self.sent += effects.send
        if effects.write:
            self._to_shadow.append(self._primary_channel.seal(effects.write))
        if effects.lapse:
            self.lapses.append(effects.lapse)
        if effects.drop:
            self.dropped.append(effects.drop)

    def _on_shadow(self, effects: Effects) -> None:
        if effects.write:
            self._to_primary.append(self._shadow_channel.seal(effects.write))
        if effects.drop:
            self.dropped.append(effects.drop)


def recorded_entries(config: GatewayConfig, events: list[Event], *, seed: int = 7,
                     with_payload: bool = True) -> tuple[Gateway, list[LogEntry]]:  # fmt: skip
    """The primary's core after `events`, and the log entries its recorder wrote for them."""
    entropy = RecordingEntropy(SystemEntropy(seed))
    gateway = Gateway(config, entropy)
    recorder = Recorder(gateway, entropy, epoch=0, with_payload=with_payload)
    recorder.attach(0.0)
    for event in events:
        recorder.record(event, gateway.handle(event))
    return gateway, [entry for frame in recorder.take_frames() for entry in frame.entries]


def channel_pair() -> tuple[StreamChannel, StreamChannel]:
    """(primary's, shadow's) ends of one connection, handshake done."""
    primary = StreamChannel(CODEC, Peering(KEY, "primary", "shadow"), nonce=b"p" * 16, initiator=False)
    shadow = StreamChannel(CODEC, Peering(KEY, "shadow", "primary"), nonce=b"s" * 16, initiator=True)
    answer = primary.feed(shadow.offer()).write
    assert shadow.feed(answer).ready
    # the primary's end is established by the shadow's first sealed frame (its Hello)
    return primary, shadow
