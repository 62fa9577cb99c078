"""A node of a primary/shadow pair: roles, the heartbeat detector, takeover and rejoin.

Roles. The primary serves: its core's events go through the replicator (log, output commit)
to the shadow. The shadow serves nothing: it replays the primary's log into a replica core
and its output gate drops every datagram the replica produces (counted). Which one a node is
at start comes from the config, except that a node configured `primary` that hears a live
primary on the heartbeat link joins as the shadow: that is how a repaired primary rejoins.

Takeover (the shadow, when the detector declares the primary dead): bind the service address,
let the replica's core draw from a live recorder, re-send the outputs of the logged events
the old primary may not have released, and serve on as primary, with the replication server
open for the next shadow. Mode `network` takes the address with an empty core; mode `none`
never takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from sipshadow.core import Gateway, SendDatagram
from sipshadow.detect.heartbeat import Heartbeat, HeartbeatDetector
from sipshadow.determinism import RecordingEntropy, SystemEntropy
from sipshadow.replication.primary import PrimaryReplicator, ShadowConnection
from sipshadow.replication.replica import Divergence, Replica
from sipshadow.replication.shadow import ShadowLink
from sipshadow.replication.tap import TapBuffer
from sipshadow.runtime.config import NodeConfig, ReplicationConfig
from sipshadow.runtime.identity import LinuxIdentity, LoopbackIdentity, ServiceIdentity
from sipshadow.runtime.node import DatagramEndpoint, Node, open_endpoint

log = logging.getLogger("sipshadow.ha")

ABORT_HOLD_S = 1.0  # after an aborted takeover, a silence must outlast this to count again
BIND_RETRY_S = 0.1  # a killed owner frees the port at once; a live one means no takeover


class HaNode:
    """One member of the pair; `role` is what it is now ("primary" or "shadow")."""

    def __init__(self, config: NodeConfig) -> None:
        assert config.replication is not None
        self.config = config
        self.replication: ReplicationConfig = config.replication
        self.role = "starting"
        self.epoch = 0
        self.node: Node | None = None
        self.replica: Replica | None = None
        self.link: ShadowLink | None = None
        self.server: asyncio.AbstractServer | None = None
        self.detector: HeartbeatDetector | None = None
        self.gated_outputs = 0
        self.takeovers: list[dict[str, Any]] = []
        self.peer_released = 0
        self.held_by_arbiter = 0
        self.arbiter: HeartbeatDetector | None = None
        self.tap: TapBuffer | None = None
        self._tap_socket: tuple[asyncio.DatagramTransport, DatagramEndpoint] | None = None
        self._peer_role = ""
        self._hold_until = 0.0
        self.tap_mode = self.replication.input == "tap"
        self.identity: ServiceIdentity = (
            LinuxIdentity(self.replication.vip_interface, config.listen[0]) if self.tap_mode else LoopbackIdentity()
        )

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        replication = self.replication
        self.detector = await self._heartbeats(replication.listen, replication.peer, self._on_peer_beat)
        if replication.arbiter_listen is not None and replication.arbiter_peer is not None:
            self.arbiter = await self._heartbeats(replication.arbiter_listen, replication.arbiter_peer, None)
        role = replication.role
        if role == "primary" and await self._peer_is_primary():
            log.info("a primary is already serving: joining as the shadow")
            role = "shadow"
        if role == "primary":
            recorder = RecordingEntropy(SystemEntropy())
            await self._serve_as_primary(Gateway(self.config.gateway, recorder), recorder, start_seq=0)
        else:
            await self._shadow()

    async def _heartbeats(
        self, listen: tuple[str, int], peer: tuple[str, int], on_beat: Callable[[Heartbeat], None] | None
    ) -> HeartbeatDetector:
        """A detector on one link: the replication link, or the service network (the arbiter)."""
        detector = HeartbeatDetector(
            key=self.replication.key,
            peer=peer,
            interval_s=self.replication.heartbeat_interval_s,
            misses=self.replication.heartbeat_misses,
            beat=self._beat,
            on_peer_beat=on_beat or (lambda beat: None),
            on_peer_dead=self._on_peer_dead,
        )
        await detector.start(listen)
        return detector

    async def _peer_is_primary(self) -> bool:
        """Listen a few heartbeat intervals for a peer already serving as primary."""
        assert self.detector is not None
        self.detector.send_now()
        wait_s = self.replication.heartbeat_interval_s * (self.replication.heartbeat_misses + 1)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._peer_role == "primary":
                self.epoch = max(self.epoch, self.detector.last_peer_beat.epoch if self.detector.last_peer_beat else 0)
                return True
            await asyncio.sleep(self.replication.heartbeat_interval_s / 2)
        return False

    async def _shadow(self) -> None:
        self.role = "shadow"
        self.replica = Replica(self.config.gateway)
        if self.tap_mode:
            self.identity.silence()
            self.tap = TapBuffer(horizon_s=self.replication.tap_horizon_s)
            self._tap_socket = await open_endpoint(self.config.listen, self._on_tap)
        if self.replication.mode == "active":
            self.link = ShadowLink(
                self.replica,
                self.replication.peer,
                key=self.replication.key,
                node_id=self.replication.node_id,
                epoch=lambda: self.epoch,
                gate=self._gate,
                tap=self.tap,
            )
            self.link.start()
        log.info("serving as SHADOW (%s mode) of %s:%d", self.replication.mode, *self.replication.peer)

    def _on_tap(self, data: bytes, source: tuple[str, int]) -> None:
        """A copy of a datagram sent to the primary, from the switch's mirror."""
        if self.tap is None:
            return
        self.tap.add(data, source[:2], asyncio.get_running_loop().time())
        if self.link is not None and self.link.synced:
            try:
                self.link.drain()
            except Divergence as error:
                log.error("shadow diverged (%s): repairing by state transfer", error)
                self.link.drop()

    def _gate(self, outputs: list[SendDatagram]) -> None:
        """The shadow's output gate: nothing reaches the SIP side."""
        self.gated_outputs += len(outputs)

    async def _serve_as_primary(
        self,
        gateway: Gateway,
        recorder: RecordingEntropy,
        start_seq: int,
        resend: list[SendDatagram] | None = None,
        backlog: list[tuple[bytes, tuple[str, int]]] | None = None,
    ) -> Node:
        """Serve: the socket, then what a takeover owes the world, then the replication server."""
        node = Node(gateway)
        node.replicator = PrimaryReplicator(
            gateway,
            recorder,
            node.send,
            key=self.replication.key,
            epoch=self.epoch,
            start_seq=start_seq,
            output_commit=self.replication.output_commit,
            commit_timeout_s=self.replication.commit_timeout_s,
            with_payload=not self.tap_mode,
        )
        if self._tap_socket is not None:
            node.adopt(*self._tap_socket)  # the socket that took the tap serves from now on
            self._tap_socket = None
        else:
            await self._bind(node)
        node.send(resend or [])
        for data, source in backlog or []:  # the detection window's messages, in arrival order
            node.on_datagram(data, source)
        loop = asyncio.get_running_loop()
        replicator = node.replicator
        host, port = self.replication.listen
        self.server = await loop.create_server(lambda: ShadowConnection(replicator), host, port, reuse_address=True)
        self.node = node
        self.role = "primary"
        log.info("serving as PRIMARY on %s:%d (epoch %d)", *self.config.listen, self.epoch)
        return node

    async def _bind(self, node: Node) -> None:
        """Bind the service address; right after a kill the old owner may hold it a moment."""
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                await node.start(self.config.listen)
                return
            except OSError as error:
                if error.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.002)

    # -- heartbeats and takeover ----------------------------------------------------------

    def _beat(self) -> Heartbeat:
        released = self.node.replicator.released if self.node and self.node.replicator else 0
        return Heartbeat(self.replication.node_id, self.epoch, self.role, released)

    def _on_peer_beat(self, beat: Heartbeat) -> None:
        self._peer_role = beat.role
        if self.role == "shadow" and beat.role == "primary" and self.replica is not None:
            self.peer_released = beat.released
            self.replica.released(beat.released)
            if self.tap is not None:
                self.tap.prune(asyncio.get_running_loop().time())

    def _on_peer_dead(self) -> None:
        if self.role == "primary" and self.node is not None and self.node.replicator is not None:
            replicator = self.node.replicator  # the shadow is gone: stop holding outputs for it now
            if replicator.connection is not None and not (self.detector and self.detector.peer_alive):
                replicator.connection.close()
                replicator.detach(replicator.connection)
            return
        if self.role != "shadow" or self.replication.mode == "none":
            return
        if self.detector is not None and self.detector.peer_alive:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._hold_until:  # a takeover just found the primary alive: look again later
            loop.call_at(self._hold_until, self._on_peer_dead)
            return
        if self.arbiter is not None and self.arbiter.peer_alive:
            # The arbiter's own silence (if the primary is really dead) calls us again.
            self.held_by_arbiter += 1
            log.warning("primary silent on the heartbeat link but answering on the service network: holding")
            return
        asyncio.get_running_loop().create_task(self.take_over())

    async def take_over(self) -> None:
        """Become the primary: the service address, the core as it stands, the unsent outputs."""
        started = time.perf_counter()
        verdict_wall = time.time()  # wall clock, so a lab can line it up with the fault it injected
        self.role = "taking-over"
        self.epoch += 1
        replica = self.replica
        assert replica is not None
        network = self.identity.claim()
        stranded = 0
        if self.link is not None:
            with contextlib.suppress(Divergence):
                self.link.drain()  # whatever the tap can still complete
            stranded = len(self.link.pending_entries())
            await self.link.close()
            self.link = None
        recorder = RecordingEntropy(SystemEntropy())
        unlogged = self.tap.unclaimed() if self.tap is not None and self.replication.mode == "active" else []
        if self.replication.mode == "active":
            replica.entropy.go_live(recorder)
            resend = replica.unreleased_outputs(data for data, _ in unlogged)
            gateway, start_seq = replica.gateway, replica.applied_seq
        else:
            gateway, start_seq, resend = Gateway(self.config.gateway, recorder), 0, []
        self.tap = None
        try:
            await self._serve_as_primary(gateway, recorder, start_seq, resend, unlogged)
        except OSError as error:  # the address is still owned: the "dead" primary was only slow
            log.error("takeover aborted (%s): rejoining as the shadow", error)
            self.takeovers.append({"epoch": self.epoch, "aborted": str(error)})
            self._hold_until = asyncio.get_running_loop().time() + ABORT_HOLD_S
            await self._shadow()
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.takeovers.append({"epoch": self.epoch, "ms": round(elapsed_ms, 2), "resent": len(resend),
                               "unlogged_processed": len(unlogged), "stranded_entries": stranded,
                               "dialogs": len(gateway.table), "entry": start_seq,
                               "network_ms": network, "verdict_at": verdict_wall,
                               "serving_at": time.time()})  # fmt: skip
        log.warning(
            "TOOK OVER as primary (epoch %d) in %.1f ms: %d dialogs, resent %d, %d unlogged tapped datagrams, "
            "from entry %d", self.epoch, elapsed_ms, len(gateway.table), len(resend), len(unlogged), start_seq,
        )  # fmt: skip
        self.replica = None

    # -- status and stop ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        ha: dict[str, Any] = {
            "role": self.role, "epoch": self.epoch, "mode": self.replication.mode,
            "peer_alive": bool(self.detector and self.detector.peer_alive),
            "heartbeats_refused": self.detector.refused if self.detector else 0,
            "detector_stalls": self.detector.stalls if self.detector else 0,
            "gated_outputs": self.gated_outputs, "takeovers": self.takeovers,
            "input": self.replication.input, "held_by_arbiter": self.held_by_arbiter,
            "arbiter_peer_alive": bool(self.arbiter and self.arbiter.peer_alive),
        }  # fmt: skip
        if self.tap is not None:
            ha["tap"] = {"buffered": len(self.tap), "received": self.tap.received, "matched": self.tap.matched,
                         "pruned": self.tap.pruned}  # fmt: skip
        if self.link is not None and self.replica is not None:
            ha["shadow"] = {"synced": self.link.synced, "applied": self.replica.applied_seq,
                            "released": self.replica.released_seq, "dialogs": len(self.replica.gateway.table),
                            **self.link.stats}  # fmt: skip
        if self.node is not None:
            document = self.node.status()
            document["ha"] = ha
            return document
        return {"ha": ha}

    async def close(self) -> None:
        if self.detector is not None:
            self.detector.close()
        if self.arbiter is not None:
            self.arbiter.close()
        if self._tap_socket is not None:
            self._tap_socket[0].close()
        if self.link is not None:
            await self.link.close()
        if self.server is not None:
            self.server.close()
        if self.node is not None:
            if self.node.replicator is not None:
                self.node.replicator.close()
            self.node.close()
