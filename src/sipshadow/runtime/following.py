"""What the shadow role runs: the tap socket (tap mode), the follower and its link.

Created by `Following.start` when the role machine says `Follow`; at takeover `hand_over`
stops following and gives the new primary the replica's core and what it owes the world.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sipshadow.core import GatewayConfig
from sipshadow.core.actions import Address
from sipshadow.determinism import RecordingEntropy
from sipshadow.link import Peering
from sipshadow.replication.follower import Follower, Handover
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
        if link is not None:
            link.start()
        log.info("serving as SHADOW (%s mode) of %s:%d", replication.mode, *replication.peer)
        return cls(follower, link, tap_socket)

    def hand_over(self, recorder: RecordingEntropy) -> Handover | None:
        """Stop following; the replica's core and what the new primary owes (None: no replica).
        The link to the dead primary is closed afterwards (`close`), off the takeover's path."""
        return self.follower.hand_over(recorder) if self.follower is not None else None

    def take_tap_socket(self) -> TapSocket | None:
        """The socket bound to the service address, for the new primary to serve on."""
        tap_socket, self.tap_socket = self.tap_socket, None
        return tap_socket

    async def close(self) -> None:
        if self.tap_socket is not None:
            self.tap_socket[0].close()
        if self.link is not None:
            await self.link.close()


def _ignore(data: bytes, source: Address) -> None:
    """Mode network: the tap's copies have no replica to feed."""
