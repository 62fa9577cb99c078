"""What the shadow role runs: the tap socket (tap mode), the follower and its link.

Created by `Following.start` when the role machine says `Follow`; at takeover `hand_over`
stops following and gives the new primary the replica's core and what it owes the world.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from sipshadow.core import GatewayConfig
from sipshadow.core.actions import Address
from sipshadow.determinism import RecordingEntropy
from sipshadow.link import Peering
from sipshadow.net.capture import PACKET_OUTGOING, open_capture
from sipshadow.replication.follower import Follower, Handover
from sipshadow.replication.segments import SegmentStore, parse
from sipshadow.replication.tap import TapBuffer
from sipshadow.runtime.config import ReplicationConfig
from sipshadow.runtime.identity import ServiceIdentity
from sipshadow.runtime.node import DatagramEndpoint, open_endpoint
from sipshadow.runtime.shadow_link import ShadowLink

log = logging.getLogger("sipshadow.ha")

TapSocket = tuple[asyncio.DatagramTransport, DatagramEndpoint]


class Following:
    """The shadow's resources; `follower` is None in mode `network` (nothing to replay)."""

    def __init__(self, follower: Follower | None, link: ShadowLink | None, tap_socket: TapSocket | None) -> None:
        self.follower = follower
        self.link = link
        self.tap_socket = tap_socket
        #: Tap mode: the mirror's TCP segments for the VIP (what the log may not have carried yet).
        self.segments = SegmentStore()
        self._capture: socket.socket | None = None
        self._vip = ""
        self._watch: asyncio.Task[None] | None = None

    def capture_segments(self, interface: str, vip: str) -> None:
        """Keep the mirror's TCP segments to `vip` (needs CAP_NET_RAW; without, a takeover
        rebuilds connections from the log alone, and says so)."""
        try:
            self._capture = open_capture(interface, vip)
        except OSError as error:
            log.warning("cannot read the mirror's TCP segments on %s (%s): bytes the primary's kernel took "
                        "and never logged are lost at a takeover", interface, error)  # fmt: skip
            return
        self._vip = vip
        asyncio.get_running_loop().add_reader(self._capture.fileno(), self._read_segments)

    def _read_segments(self) -> None:
        capture, store = self._capture, self.segments
        if capture is None:
            return
        now = time.monotonic()
        for _ in range(256):  # a bounded batch per wake-up: the loop has other work
            try:
                packet, address = capture.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("mirror capture failed: %s", error)
                self._stop_capture()
                return
            if address[2] == PACKET_OUTGOING:
                continue
            segment = parse(packet, self._vip)
            if segment is not None:
                store.add(segment, now)

    def _stop_capture(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._capture is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._capture.fileno())
            self._capture.close()
            self._capture = None

    @classmethod
    async def start(
        cls, gateway: GatewayConfig, replication: ReplicationConfig, listen: Address, *, tap_mode: bool,
        identity: ServiceIdentity, epoch: Callable[[], int], peering: Peering,
    ) -> Following:  # fmt: skip
        """Silence the service address (tap mode: receive the mirror's copies on it) and follow
        the primary's log (mode active); `epoch` gives this node's epoch when it says hello."""
        tap = TapBuffer(horizon_s=replication.tap_horizon_s) if tap_mode else None
        follower = link = None
        if replication.mode == "active":
            follower = Follower(gateway, node_id=replication.node_id, tap=tap)
            link = ShadowLink(follower, replication.peer, peering=peering, epoch=epoch)
        tap_socket = None
        if tap_mode:
            identity.silence()
            tapped = link.tapped if link is not None else _ignore
            tap_socket = await open_endpoint(listen, lambda data, source: tapped(data, source[:2]))
        following = cls(follower, link, tap_socket)
        if tap_mode and follower is not None and replication.vip_interface:
            following.capture_segments(replication.vip_interface, listen[0])
            log.info("tap mode: this node needs a copy of every frame sent to the primary's MAC for %s, on %s "
                     "(a switch port mirror of the peer's traffic to this port; promiscuous mode %s on %s)",
                     listen[0], replication.vip_interface, "on" if promiscuous(replication.vip_interface) else
                     "OFF", replication.vip_interface)  # fmt: skip
            following._watch = asyncio.get_running_loop().create_task(following._watch_mirror())
        if link is not None:
            link.start()
        log.info("serving as SHADOW (%s mode) of %s:%d", replication.mode, *replication.peer)
        return following

    async def _watch_mirror(self, every_s: float = 5.0) -> None:
        """Say (once per silence) when the mirror delivers nothing while the log runs: every
        message then waits for its payload from the primary, and a takeover recovers nothing
        of what the dead primary had not logged."""
        follower = self.follower
        if follower is None or follower.tap is None:
            return
        tap, said = follower.tap, False
        received, requests = tap.received, follower.stats["payload_requests"]
        while True:
            await asyncio.sleep(every_s)
            starved = tap.received == received and follower.stats["payload_requests"] > requests
            if starved and not said:
                log.error(
                    "the mirror delivers no copies to %s while the primary's log runs: check the switch's port "
                    "mirror (the primary's MAC to this port) and promiscuous mode", self._vip or "the VIP",
                )
            elif not starved and said:
                log.warning("the mirror delivers copies again")
            said = starved
            received, requests = tap.received, follower.stats["payload_requests"]

    def hand_over(self, recorder: RecordingEntropy) -> Handover | None:
        """Stop following; the replica's core and what the new primary owes (None: no replica).
        The link to the dead primary is closed afterwards (`close`), off the takeover's path."""
        self._read_segments()  # what the mirror delivered up to now
        self._stop_capture()
        if self.tap_socket is not None:  # from now on the copies wait on the socket for the new primary,
            self.tap_socket[1].handler = None  # after the tap's unclaimed ones (`Node.open_input`)
        return self.follower.hand_over(recorder) if self.follower is not None else None

    def take_tap_socket(self) -> TapSocket | None:
        """The socket bound to the service address, for the new primary to serve on."""
        tap_socket, self.tap_socket = self.tap_socket, None
        return tap_socket

    async def close(self) -> None:
        self._stop_capture()
        if self.tap_socket is not None:
            self.tap_socket[0].close()
        if self.link is not None:
            await self.link.close()


def _ignore(data: bytes, source: Address) -> None:
    """Mode network: the tap's copies have no replica to feed."""


def promiscuous(interface: str) -> bool:
    """Whether `interface` accepts frames for other MACs (IFF_PROMISC): a physical NIC drops the
    mirror's copies, which carry the primary's MAC, unless it does."""
    try:
        return bool(int(Path(f"/sys/class/net/{interface}/flags").read_text(), 16) & 0x100)
    except (OSError, ValueError):
        return False
